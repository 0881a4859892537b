"""The autograd Function around the compiled kernels."""
import torch
from torch.autograd.function import once_differentiable


class MSDeformAttnFunction(torch.autograd.Function):
    """
    Multi-scale deformable attention with compiled forward and backward kernels.

    The value and the output keep the dtype of ``value`` (fp16/bf16 stay so); sampling locations and attention
    weights are handed to the kernels in the accumulation type (fp32, or fp64 for fp64 values), which is also the
    precision of all sums. Gradients come back in the dtype of each input.
    """

    @staticmethod
    def forward(ctx, kernels, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        acc_dtype = torch.promote_types(value.dtype, torch.float32)
        value = value.contiguous()
        spatial_shapes = spatial_shapes.to(device=value.device, dtype=torch.long).contiguous()
        level_start_index = level_start_index.to(device=value.device, dtype=torch.long).contiguous()
        locations = sampling_locations.to(acc_dtype).contiguous()
        weights = attention_weights.to(acc_dtype).contiguous()
        output = kernels.forward(value, spatial_shapes, level_start_index, locations, weights)
        ctx.save_for_backward(value, spatial_shapes, level_start_index, locations, weights)
        ctx.kernels = kernels
        ctx.input_dtypes = (sampling_locations.dtype, attention_weights.dtype)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, locations, weights = ctx.saved_tensors
        grad_output = grad_output.to(value.dtype).contiguous()
        grad_value, grad_locations, grad_weights = ctx.kernels.backward(
            value, spatial_shapes, level_start_index, locations, weights, grad_output
        )
        locations_dtype, weights_dtype = ctx.input_dtypes
        return None, grad_value, None, None, grad_locations.to(locations_dtype), grad_weights.to(weights_dtype)
