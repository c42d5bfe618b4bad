//! The buyer's side of cpushare: uploading images, placing orders and
//! following jobs. The `cpushare` binary is a thin CLI over this.

pub mod image;
pub mod listing;
pub mod net;
pub mod run;
pub mod share;
pub mod upload;
pub mod vm_share;
pub mod wasm_share;
