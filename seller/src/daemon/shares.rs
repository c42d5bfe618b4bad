//! A wasm lease's `--share`s on the seller. Read-only inputs are fetched
//! by content id (through the image cache, so a bundle many leases use is
//! fetched once) and unpacked inside the lease's scratch before the
//! sandbox starts; writable shares start empty, and after a clean exit
//! their contents are packed into one bundle and sent to the broker
//! ahead of the lease's end. The layout is [`crate::wasm::shares`].

use super::{fetch, Ctx};
use crate::wasm::shares::{share_dir, SHARES_DIR};
use cpushare_proto::bundle::{self, Packer, MAX_BUNDLE};
use cpushare_proto::msg::{LeaseSpec, SellerMsg, CHUNK};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Largest output bundle a lease may send back.
pub(super) const MAX_OUTPUTS: u64 = 256 << 20;

/// Lays out every share of `spec` under `scratch`; inputs owned by the
/// daemon (the guest may only read them), outputs by the guest's `uid`.
pub(super) async fn stage(
    ctx: &Ctx,
    spec: &LeaseSpec,
    scratch: &Path,
    uid: u32,
) -> Result<(), String> {
    if spec.job.shares.is_empty() {
        return Ok(());
    }
    let top = scratch.join(SHARES_DIR);
    let mkdir = |dir: &Path, mode: u32| {
        std::fs::create_dir(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)))
            .map_err(|e| {
                format!(
                    "seller could not lay out the shares in {}: {e}",
                    dir.display()
                )
            })
    };
    mkdir(&top, 0o755)?;
    for share in &spec.job.shares {
        let dir = share_dir(scratch, &share.guest, share.writable);
        if share.writable {
            mkdir(&dir, 0o700)?;
            std::os::unix::fs::chown(&dir, Some(uid), Some(uid))
                .map_err(|e| format!("seller could not hand over {}: {e}", dir.display()))?;
            continue;
        }
        let Some((id, len)) = share.input else {
            return Err(format!("share {} has no input bundle", share.guest));
        };
        mkdir(&dir, 0o755)?;
        let bytes = fetch::image(&ctx.conn, &ctx.cache, id, len)
            .await
            .map_err(|e| format!("fetching the bundle for {}: {e}", share.guest))?;
        let guest = share.guest.clone();
        tokio::task::spawn_blocking(move || bundle::extract(&bytes, &dir, MAX_BUNDLE))
            .await
            .map_err(|e| format!("unpacking thread failed: {e}"))?
            .map_err(|e| format!("the bundle for {guest}: {e}"))?;
    }
    Ok(())
}

/// Packs the writable shares (share `i` under `i/`) and sends the bundle
/// to the broker in chunks. Called only after the job exited with 0.
pub(super) async fn ship(ctx: &Ctx, spec: &LeaseSpec, scratch: &Path) -> Result<(), String> {
    if !spec.job.shares.iter().any(|s| s.writable) {
        return Ok(());
    }
    // The guest owns the scratch directory, so it may have renamed the
    // daemon's `.shares` away and put a symlink (to /etc/ssh, say) where a
    // writable share was: the daemon, root and outside the jail, would
    // then pack host files. The sandbox is reaped, so nothing changes
    // them after this check: `.shares` must still be the daemon's own real
    // directory, and each writable share a real directory in it.
    let top = scratch.join(SHARES_DIR);
    // SAFETY: geteuid cannot fail.
    let daemon = unsafe { libc::geteuid() };
    real_dir(&top, Some(daemon))?;
    for share in spec.job.shares.iter().filter(|s| s.writable) {
        real_dir(&share_dir(scratch, &share.guest, true), None)?;
    }
    let scratch = scratch.to_path_buf();
    let shares = spec.job.shares.clone();
    let packed = tokio::task::spawn_blocking(move || {
        let mut p = Packer::new(MAX_OUTPUTS);
        for (i, share) in shares.iter().enumerate().filter(|(_, s)| s.writable) {
            let name = i.to_string();
            p.dir(&name)?;
            p.tree(&name, &share_dir(&scratch, &share.guest, true))?;
        }
        Ok::<_, bundle::BundleError>(p.finish())
    })
    .await
    .map_err(|e| format!("packing thread failed: {e}"))?
    .map_err(|e| format!("the job's outputs cannot be shipped: {e}"))?;
    for chunk in packed.chunks(CHUNK) {
        ctx.out
            .send(SellerMsg::Outputs {
                lease: spec.lease.clone(),
                data: chunk.to_vec(),
            })
            .map_err(|_| "the broker session ended before the outputs were sent".to_string())?;
    }
    Ok(())
}

/// Checks that `path` is a directory itself (not a symlink to one), owned
/// by `owner` when given.
fn real_dir(path: &Path, owner: Option<u32>) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let refused = |why: &str| {
        format!(
            "the job's outputs are not shipped: {} {why} (the guest tampered with its share layout)",
            path.display()
        )
    };
    let meta = std::fs::symlink_metadata(path).map_err(|e| refused(&e.to_string()))?;
    if !meta.file_type().is_dir() {
        return Err(refused("is not a directory"));
    }
    if owner.is_some_and(|o| meta.uid() != o) {
        return Err(refused("is not the seller's own"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_or_foreign_share_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        assert!(real_dir(&real, Some(me)).is_ok());
        assert!(real_dir(&real, Some(me + 1))
            .unwrap_err()
            .contains("not the seller's own"));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(real_dir(&link, None)
            .unwrap_err()
            .contains("not a directory"));
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(real_dir(&file, None).is_err());
        assert!(real_dir(&dir.path().join("missing"), None).is_err());
    }
}
