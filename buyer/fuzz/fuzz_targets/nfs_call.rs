//! Any bytes as one RPC record sent to the share server: dispatch must
//! reply or refuse, never panic, over-allocate or touch anything outside
//! the (read-only) export. With the first byte odd, the bytes become the
//! arguments of an NFSv3 call that starts with a valid root handle, so the
//! fuzzer reaches every procedure's decoder past the handle check.
#![no_main]

use std::sync::OnceLock;

use cpushare_buyer::share::service::ShareService;
use cpushare_buyer::share::xdr::XdrWriter;
use cpushare_buyer::share::Share;
use libfuzzer_sys::fuzz_target;

fn service() -> &'static (ShareService, Vec<u8>) {
    static SVC: OnceLock<(ShareService, Vec<u8>)> = OnceLock::new();
    SVC.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("cpushare-share-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).expect("create fuzz export");
        std::fs::write(dir.join("file"), b"fuzz").expect("create fuzz file");
        let _ = std::os::unix::fs::symlink("/etc", dir.join("link"));
        let share = Share {
            host_dir: dir,
            guest_path: "/src".into(),
            writable: false,
        };
        let svc = ShareService::new(&[share], 2049).expect("open fuzz export");
        let root = svc
            .handle_bytes(&svc.exports[0], svc.exports[0].root_ino())
            .to_vec();
        (svc, root)
    })
}

fuzz_target!(|data: &[u8]| {
    let (svc, root) = service();
    let mut w = XdrWriter::default();
    match data.split_first() {
        Some((&mode, rest)) if mode & 1 == 1 && !rest.is_empty() => {
            let mut rec = XdrWriter::default();
            for v in [1, 0, 2, 100_003, 3, u32::from(rest[0] % 23), 0, 0, 0, 0] {
                rec.u32(v);
            }
            rec.opaque(root);
            rec.buf.extend_from_slice(&rest[1..]);
            svc.dispatch(&rec.buf, &mut w);
        }
        _ => {
            svc.dispatch(data, &mut w);
        }
    }
});
