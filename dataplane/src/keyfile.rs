//! The host's X25519 static key on disk: one line of base64 (like a
//! WireGuard private key), mode 0600, created on first start.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use vxnet_proto::crypto::OsRng;
use vxnet_proto::crypto::keys::StaticKeypair;
use zeroize::Zeroizing;

/// Reads the key at `path`, or creates one there (and its directory, 0700)
/// if there is none. Refuses a key file others can read.
pub fn load_or_create(path: &Path) -> io::Result<(StaticKeypair, bool)> {
    match fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "key file {} can be read by others (mode {mode:04o}); run `chmod 600 {}`",
                        path.display(),
                        path.display()
                    ),
                ));
            }
            let text = Zeroizing::new(fs::read_to_string(path)?);
            let bytes = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| bad_key(path))?);
            let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| bad_key(path))?;
            Ok((StaticKeypair::from_bytes(secret), false))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
            }
            let key = StaticKeypair::generate(&mut OsRng);
            let text = Zeroizing::new(format!("{}\n", STANDARD.encode(*key.to_bytes())));
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            Ok((key, true))
        }
        Err(e) => Err(e),
    }
}

fn bad_key(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "key file {} does not hold a base64 X25519 key (44 characters)",
            path.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reloaded() {
        let dir = std::env::temp_dir().join(format!("vxnet-key-{}", std::process::id()));
        let path = dir.join("sub/dataplane.key");
        let (a, created) = load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (b, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(a.public(), b.public());

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(&path).err().unwrap();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "not a key\n").unwrap();
        let e = load_or_create(&path).err().unwrap();
        assert!(e.to_string().contains("base64"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
