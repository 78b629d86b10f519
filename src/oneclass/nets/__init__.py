"""Networks. Each file holds one family; methods build them by name and input shape."""

from .lenet import Decoder, Encoder, encoder_widths

__all__ = ["Encoder", "Decoder", "encoder_widths"]
