"""Tensors the IP-Adapter branches read every sampling step, in the shape ComfyUI's model management can place."""

from torch import Tensor, nn


class TensorGroup(nn.Module):
    """Named tensors as one leaf module's frozen parameters: the unit ComfyUI moves, and in low-VRAM mode loads or leaves
    on the offload device (a buffer-only module would never be moved by a partial load)."""

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        super().__init__()
        self.names = {key: key.replace(".", "_") for key in tensors}
        for key, tensor in tensors.items():
            self.register_parameter(self.names[key], nn.Parameter(tensor, requires_grad=False))

    def tensors(self) -> dict[str, Tensor]:
        """The tensors by their key, wherever ComfyUI has put them now."""
        return {key: getattr(self, name) for key, name in self.names.items()}
