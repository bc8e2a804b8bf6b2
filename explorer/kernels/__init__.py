"""Pure torch kernels: tensors in, tensors out, on the input's device. No Panel, no I/O."""
