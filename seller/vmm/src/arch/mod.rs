//! Architecture-specific setup; only x86_64 is supported.

pub mod x86_64;
