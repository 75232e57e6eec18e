//! Compute backends: one `Backend` trait, a CPU and a CUDA implementation.
