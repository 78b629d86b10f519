"""Networks. Each file holds one family; methods build them by name and input shape."""

from .lenet import Decoder, Encoder, ReferenceDecoder, encoder_widths, xavier_init_encoder_

__all__ = ["Encoder", "Decoder", "ReferenceDecoder", "encoder_widths", "xavier_init_encoder_"]
