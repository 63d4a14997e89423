//! CPU compute kernels for the networks dreamd runs itself: 3×3 convolutions as shifted matrix
//! products ([`conv`]), their Winograd F(4,3) form ([`winograd`]) with its Winograd-domain
//! products ([`tile_products`]), the instruction-set level they run at ([`isa`]), and the
//! buffer pool they draw their memory from ([`pool`]). Nothing here knows a model; the model
//! code (`taesd::cpu`) composes these.

pub mod conv;
pub mod isa;
pub mod pool;
pub mod tile_products;
pub mod winograd;
