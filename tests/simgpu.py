"""A simulated GPU, for device-mismatch checks on a machine without one (test helper).

Tensors "on the GPU" are wrapper-subclass tensors (class Dev) reporting device 'meta' whose
data lives on the CPU. A dispatch mode:
  * makes factories with device='meta' and .to('meta') produce Dev tensors (real CPU data),
  * raises DeviceMismatch when an op mixes a Dev tensor with a plain (CPU) tensor of dim > 0
    (what CUDA raises), except copy_ / _to_copy and CPU index tensors into a Dev tensor,
  * raises when a CPU torch.Generator is passed to a factory on the simulated device,
  * .cpu() gives plain tensors back. .numpy() on a Dev tensor fails (as on CUDA).
"""
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

GPU = torch.device("meta")


class DeviceMismatch(RuntimeError):
    pass


class Dev(torch.Tensor):
    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem):
        assert type(elem) is torch.Tensor or isinstance(elem, torch.nn.Parameter) is False
        r = torch.Tensor._make_wrapper_subclass(
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(),
            dtype=elem.dtype, layout=elem.layout, device=GPU, requires_grad=elem.requires_grad)
        r.elem = elem
        return r

    def __repr__(self):
        return f"Dev({self.elem!r})"

    def __tensor_flatten__(self):
        return ["elem"], None

    @staticmethod
    def __tensor_unflatten__(inner, meta, outer_size, outer_stride):
        return Dev(inner["elem"])

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        # only reached when the mode is not active
        raise RuntimeError(f"Dev op outside SimGPU mode: {func}")


ALLOW_MIX = {"aten.copy_.default", "aten._to_copy.default", "aten.copy.default",
             "aten.lift_fresh.default", "aten.detach.default", "aten.set_.source_Tensor"}
INDEX_OPS = {"aten.index.Tensor", "aten.index_put_.default", "aten._index_put_impl_.default",
             "aten.index_put.default"}



def _is_gpu_dev(d):
    return d is not None and torch.device(d).type == "meta"


class SimGPU(TorchDispatchMode):
    """Inside, tensors on ``GPU`` behave as on a CUDA device; ``mps=True`` also refuses
    float64 there, as Apple's MPS does."""

    def __init__(self, mps: bool = False):
        super().__init__()
        self.mps = mps

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = str(func)
        flat, _ = tree_flatten((args, kwargs))
        devs = [t for t in flat if isinstance(t, Dev)]
        plain = [t for t in flat if isinstance(t, torch.Tensor) and not isinstance(t, Dev)]
        # factories / copies to the simulated GPU
        if _is_gpu_dev(kwargs.get("device")):
            gen = kwargs.get("generator")
            if gen is not None and gen.device.type == "cpu":
                raise DeviceMismatch(f"{name}: CPU torch.Generator used for a tensor on the GPU")
            kwargs["device"] = torch.device("cpu")
            out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
            if self.mps and any(isinstance(t, torch.Tensor) and t.dtype == torch.float64
                                for t in tree_flatten(out)[0]):
                raise DeviceMismatch(f"{name}: float64 tensor on the GPU (MPS has no float64)")
            return tree_map(_wrap, out)
        if name == "aten._to_copy.default" and kwargs.get("device") is not None \
                and torch.device(kwargs["device"]).type == "cpu":
            return func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
        if name == "aten._local_scalar_dense.default":
            return func(*tree_map(_unwrap, args), **kwargs)
        if devs and name not in ALLOW_MIX:
            bad = [t for t in plain if t.dim() > 0]
            if name in INDEX_OPS:
                self_t = args[0]
                idx = args[1] if len(args) > 1 else []
                idx_ids = {id(i) for i in idx if i is not None}
                if isinstance(self_t, Dev):
                    bad = [t for t in bad if id(t) not in idx_ids]
            if bad:
                shapes = [tuple(t.shape) for t in bad]
                raise DeviceMismatch(f"{name}: GPU tensor(s) mixed with CPU tensor(s) of shape {shapes}")
        if not devs:
            return func(*args, **kwargs)
        out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
        if self.mps:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                    raise DeviceMismatch(f"{name}: float64 tensor on the GPU (MPS has no float64)")
        # in-place / out= ops: return the original object
        sch = func._schema
        if sch.returns and sch.returns[0].alias_info is not None and sch.returns[0].alias_info.is_write:
            given = list(args) + [kwargs.get(a.name) for a in sch.arguments[len(args):]]
            for a, v in zip(sch.arguments, given):
                if a.alias_info is not None and a.alias_info.is_write and isinstance(v, torch.Tensor):
                    return v if len(sch.returns) == 1 else out
        return tree_map(_wrap, out)


def _unwrap(t):
    return t.elem if isinstance(t, Dev) else t


def _wrap(t):
    return Dev(t) if isinstance(t, torch.Tensor) and not isinstance(t, Dev) else t
