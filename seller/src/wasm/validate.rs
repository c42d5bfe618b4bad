//! Cheap checks on a buyer's bytes before anything is compiled: size, magic,
//! core module vs component, and that every import is a WASI preview 1
//! function. Compilation (which validates fully) only sees bytes that pass.

use super::WasmError;
use wasmparser::{Parser, Payload, TypeRef};

/// The largest module accepted, in bytes (256 MiB: real programs built
/// for WASI pass 64 MiB, YoWASP's Yosys is 69 MB).
pub const MAX_MODULE_BYTES: usize = 256 << 20;
// The broker refuses orders for larger modules by the same bound.
const _: () = assert!(MAX_MODULE_BYTES as u64 == cpushare_proto::msg::MAX_WASM);

/// The one import module a guest may use.
pub(crate) const WASI_P1_MODULE: &str = "wasi_snapshot_preview1";

const MAGIC: &[u8; 4] = b"\0asm";
/// Version field of a core module (version 1, layer 0).
const CORE_VERSION: [u8; 4] = [1, 0, 0, 0];
/// Layer field of a component (bytes 6..8 of the header).
const COMPONENT_LAYER: [u8; 2] = [1, 0];

/// Checks `bytes` is a core module of acceptable size whose imports are all
/// `wasi_snapshot_preview1` functions for which `is_provided(name)` holds.
pub(crate) fn check_module(
    bytes: &[u8],
    is_provided: impl Fn(&str) -> bool,
) -> Result<(), WasmError> {
    if bytes.len() > MAX_MODULE_BYTES {
        return Err(WasmError::TooLarge {
            len: bytes.len(),
            max: MAX_MODULE_BYTES,
        });
    }
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(WasmError::NotWasm {
            head: hex::encode(&bytes[..bytes.len().min(8)]),
        });
    }
    if bytes[6..8] == COMPONENT_LAYER {
        return Err(WasmError::ComponentNotSupported);
    }
    if bytes[4..8] != CORE_VERSION {
        return Err(WasmError::Invalid {
            reason: format!("unsupported binary version {}", hex::encode(&bytes[4..8])),
        });
    }
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(invalid)?;
        if let Payload::ImportSection(reader) = payload {
            for import in reader.into_imports() {
                let import = import.map_err(invalid)?;
                let is_func = matches!(import.ty, TypeRef::Func(_) | TypeRef::FuncExact(_));
                if import.module != WASI_P1_MODULE || !is_func || !is_provided(import.name) {
                    return Err(WasmError::ForbiddenImport {
                        module: import.module.to_string(),
                        name: import.name.to_string(),
                    });
                }
            }
        }
    }
    Ok(())
}

fn invalid(e: wasmparser::BinaryReaderError) -> WasmError {
    WasmError::Invalid {
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(_: &str) -> bool {
        true
    }

    fn wat(text: &str) -> Vec<u8> {
        wat::parse_str(text).expect("test WAT parses")
    }

    #[test]
    fn accepts_a_module_importing_only_wasi_functions() {
        let bytes = wat(r#"(module
            (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
            (memory (export "memory") 1)
            (func (export "_start")))"#);
        check_module(&bytes, any).unwrap();
    }

    #[test]
    fn rejects_bytes_that_are_not_wasm() {
        match check_module(b"#!/bin/sh\necho hi\n", any) {
            Err(WasmError::NotWasm { head }) => assert_eq!(head, hex::encode(b"#!/bin/s")),
            other => panic!("expected NotWasm, got {other:?}"),
        }
        assert!(matches!(
            check_module(b"\0as", any),
            Err(WasmError::NotWasm { .. })
        ));
    }

    #[test]
    fn rejects_a_component() {
        let header = [0, b'a', b's', b'm', 0x0d, 0, 1, 0];
        assert!(matches!(
            check_module(&header, any),
            Err(WasmError::ComponentNotSupported)
        ));
    }

    #[test]
    fn rejects_an_import_from_another_module() {
        let bytes = wat(r#"(module (import "env" "foo" (func)))"#);
        match check_module(&bytes, any) {
            Err(WasmError::ForbiddenImport { module, name }) => {
                assert_eq!((module.as_str(), name.as_str()), ("env", "foo"));
            }
            other => panic!("expected ForbiddenImport, got {other:?}"),
        }
    }

    #[test]
    fn rejects_a_wasi_function_the_host_does_not_provide() {
        let bytes = wat(r#"(module (import "wasi_snapshot_preview1" "sock_open" (func)))"#);
        match check_module(&bytes, |name| name != "sock_open") {
            Err(WasmError::ForbiddenImport { name, .. }) => assert_eq!(name, "sock_open"),
            other => panic!("expected ForbiddenImport, got {other:?}"),
        }
    }

    #[test]
    fn rejects_a_wasi_import_that_is_not_a_function() {
        let bytes = wat(r#"(module (import "wasi_snapshot_preview1" "mem" (memory 1)))"#);
        assert!(matches!(
            check_module(&bytes, any),
            Err(WasmError::ForbiddenImport { .. })
        ));
    }

    #[test]
    fn rejects_an_oversized_module_before_parsing() {
        let bytes = vec![0u8; MAX_MODULE_BYTES + 1];
        match check_module(&bytes, any) {
            Err(WasmError::TooLarge { len, max }) => {
                assert_eq!((len, max), (MAX_MODULE_BYTES + 1, MAX_MODULE_BYTES));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn rejects_a_truncated_module() {
        let mut bytes = wat(r#"(module (func (export "_start")))"#);
        bytes.truncate(bytes.len() - 3);
        assert!(matches!(
            check_module(&bytes, any),
            Err(WasmError::Invalid { .. })
        ));
    }

    #[test]
    fn rejects_an_unknown_core_version() {
        let header = [0, b'a', b's', b'm', 2, 0, 0, 0];
        assert!(matches!(
            check_module(&header, any),
            Err(WasmError::Invalid { .. })
        ));
    }
}
