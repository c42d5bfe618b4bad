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
