//! CPU compute kernels for the networks dreamd runs itself: 3×3 convolutions as shifted matrix
//! products ([`conv`]), their Winograd F(4,3) form ([`winograd`]), and the buffer pool both
//! draw their memory from ([`pool`]). Nothing here knows a model; the model code
//! (`taesd::cpu`) composes these.

pub mod conv;
pub mod pool;
pub mod winograd;
