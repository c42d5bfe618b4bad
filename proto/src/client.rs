//! The client side of the control protocol, shared by `cpushare` and
//! `cpushare-seller`: where an identity lives on disk, enrollment, and
//! request/response calls over one mutual-TLS QUIC connection.

use crate::frame::{self, FrameError};
use crate::identity::{self, IdentityError, BROKER_NAME};
use crate::msg::{Request, Response, Role};
use crate::token::{Token, TokenError};
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// Why a client operation failed; every message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// no identity in {home}: enroll first (`cpushare login TOKEN` or `cpushare-seller enroll TOKEN`)
    #[error("no identity in {home}: enroll first (`cpushare login TOKEN` or `cpushare-seller enroll TOKEN`)")]
    NotEnrolled {
        /// The home directory looked in.
        home: String,
    },
    /// {home} already holds the identity `{name}`; use another --home, or delete that directory to enroll again
    #[error("{home} already holds the identity `{name}`; use another --home, or delete that directory to enroll again")]
    AlreadyEnrolled {
        /// Home directory.
        home: String,
        /// Existing account name.
        name: String,
    },
    /// this token enrolls a {got}, but this program needs a {want} token; ask the broker operator for one (`cpushare-broker account add NAME --role {want}`)
    #[error("this token enrolls a {got}, but this program needs a {want} token; ask the broker operator for one (`cpushare-broker account add NAME --role {want}`)")]
    WrongRole {
        /// Role in the token.
        got: Role,
        /// Role needed.
        want: Role,
    },
    /// bad token: {0}
    #[error("bad token: {0}")]
    Token(#[from] TokenError),
    /// identity: {0}
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    /// cannot resolve broker address `{0}`
    #[error("cannot resolve broker address `{0}`")]
    Resolve(String),
    /// cannot reach the broker at {addr}: {reason}; is `cpushare-broker serve` running there?
    #[error(
        "cannot reach the broker at {addr}: {reason}; is `cpushare-broker serve` running there?"
    )]
    Connect {
        /// Address tried.
        addr: SocketAddr,
        /// Cause.
        reason: String,
    },
    /// connection to the broker lost: {0}
    #[error("connection to the broker lost: {0}")]
    Lost(String),
    /// protocol error: {0}
    #[error("protocol error: {0}")]
    Frame(#[from] FrameError),
    /// the broker refused: {0}
    #[error("{0}")]
    Refused(crate::msg::ErrorReply),
    /// the broker sent an unexpected reply: {0}
    #[error("the broker sent an unexpected reply: {0}")]
    Unexpected(String),
    /// {path}: {source}
    #[error("{path}: {source}")]
    File {
        /// File involved.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// What `broker.json` in a home directory records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HomeInfo {
    /// Control endpoint `host:port`.
    pub broker: String,
    /// Account name.
    pub name: String,
    /// Role.
    pub role: Role,
}

/// A directory holding one enrolled identity: `key.pem`, `cert.pem`,
/// `ca.pem`, `broker.json`.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// The identity directory `dir` (it need not exist yet).
    pub fn new(dir: impl Into<PathBuf>) -> Home {
        Home { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The recorded broker and account, if enrolled.
    pub fn info(&self) -> Result<HomeInfo, ClientError> {
        let path = self.dir.join("broker.json");
        let text = std::fs::read_to_string(&path).map_err(|_| ClientError::NotEnrolled {
            home: self.dir.display().to_string(),
        })?;
        serde_json::from_str(&text).map_err(|e| ClientError::File {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    /// Redeems `token` at the broker it names and stores the identity here.
    pub async fn enroll(&self, token: &str, want: Role) -> Result<HomeInfo, ClientError> {
        if let Ok(info) = self.info() {
            return Err(ClientError::AlreadyEnrolled {
                home: self.dir.display().to_string(),
                name: info.name,
            });
        }
        let token = Token::decode(token)?;
        if token.role != want {
            return Err(ClientError::WrongRole {
                got: token.role,
                want,
            });
        }
        let (key, csr_der) = identity::new_key_and_csr(&token.name)?;
        let addr = resolve(&token.enroll)?;
        let cfg = identity::enroll_client_config(token.ca_sha256)?;
        let conn = connect(addr, cfg).await?;
        let replies = call_on(
            &conn,
            &Request::Enroll {
                secret: token.secret.clone(),
                csr_der,
            },
        )
        .await?;
        conn.close(0u32.into(), b"enrolled");
        let (name, role, cert_der, ca_der) = match replies.into_iter().next() {
            Some(Response::Enrolled {
                name,
                role,
                cert_der,
                ca_der,
            }) => (name, role, cert_der, ca_der),
            Some(Response::Error(e)) => return Err(ClientError::Refused(e)),
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        };
        if identity::fingerprint(&ca_der) != token.ca_sha256 {
            return Err(ClientError::Unexpected(
                "the broker sent a CA other than the one the token pins".into(),
            ));
        }
        let file_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| ClientError::File { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(file_err(&self.dir))?;
        identity::write_private(&self.dir.join("key.pem"), key.serialize_pem().as_bytes())?;
        let write = |name: &str, text: String| {
            let path = self.dir.join(name);
            std::fs::write(&path, text).map_err(file_err(&path))
        };
        write("cert.pem", identity::pem_cert(&cert_der))?;
        write("ca.pem", identity::pem_cert(&ca_der))?;
        let info = HomeInfo {
            broker: token.broker,
            name,
            role,
        };
        write(
            "broker.json",
            serde_json::to_string_pretty(&info).expect("HomeInfo serializes"),
        )?;
        Ok(info)
    }

    /// Connects to the broker with this identity.
    pub async fn connect(&self) -> Result<Client, ClientError> {
        let info = self.info()?;
        let ca = identity::read_cert(&self.dir.join("ca.pem"))?;
        let cert = identity::read_cert(&self.dir.join("cert.pem"))?;
        let key = identity::read_key(&self.dir.join("key.pem"))?;
        let cfg = identity::client_config(&ca, vec![cert], key)?;
        let addr = resolve(&info.broker)?;
        let conn = connect(addr, cfg).await?;
        Ok(Client { conn, info })
    }
}

/// Resolves `host:port`.
pub fn resolve(addr: &str) -> Result<SocketAddr, ClientError> {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ClientError::Resolve(addr.to_string()))
}

/// Opens a QUIC connection to the broker with `cfg`.
pub async fn connect(
    addr: SocketAddr,
    cfg: quinn::ClientConfig,
) -> Result<quinn::Connection, ClientError> {
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().expect("valid literal")
    } else {
        "0.0.0.0:0".parse().expect("valid literal")
    };
    let conn_err = |reason: String| ClientError::Connect { addr, reason };
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| conn_err(e.to_string()))?;
    endpoint.set_default_client_config(cfg);
    let connecting = endpoint
        .connect(addr, BROKER_NAME)
        .map_err(|e| conn_err(e.to_string()))?;
    connecting.await.map_err(|e| conn_err(e.to_string()))
}

/// Sends one request on a new stream and collects every reply until the
/// broker finishes the stream.
pub async fn call_on(
    conn: &quinn::Connection,
    req: &Request,
) -> Result<Vec<Response>, ClientError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| ClientError::Lost(e.to_string()))?;
    frame::write(&mut send, req).await?;
    send.finish()
        .map_err(|e| ClientError::Lost(e.to_string()))?;
    let mut out = Vec::new();
    while let Some(r) = frame::read::<Response, _>(&mut recv).await? {
        out.push(r);
    }
    Ok(out)
}

/// An authenticated connection to the broker.
pub struct Client {
    /// The QUIC connection.
    pub conn: quinn::Connection,
    /// Who we are.
    pub info: HomeInfo,
}

impl Client {
    /// Sends a request and returns its single reply, turning a refusal into an error.
    pub async fn call(&self, req: &Request) -> Result<Response, ClientError> {
        let mut replies = call_on(&self.conn, req).await?;
        match replies.len() {
            1 => match replies.remove(0) {
                Response::Error(e) => Err(ClientError::Refused(e)),
                r => Ok(r),
            },
            0 => Err(ClientError::Lost(
                "the broker closed the stream without answering".into(),
            )),
            n => Err(ClientError::Unexpected(format!(
                "{n} replies to one request"
            ))),
        }
    }

    /// Opens a stream for a long exchange (`Buy` with follow, `Sell`, uploads).
    pub async fn open(&self) -> Result<(quinn::SendStream, quinn::RecvStream), ClientError> {
        self.conn
            .open_bi()
            .await
            .map_err(|e| ClientError::Lost(e.to_string()))
    }
}

/// `$HOME/NAME` (or `./NAME` without a home), where a CLI keeps its identity.
pub fn home_dir(name: &str) -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(name)
}

/// Parses a memory size for the command line: `512M`, `2G` or plain MiB.
pub fn parse_size_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.as_bytes().last() {
        Some(b'G' | b'g') => (&t[..t.len() - 1], 1024),
        Some(b'M' | b'm') => (&t[..t.len() - 1], 1),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("`{s}` is not a size like 512M or 2G"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size_mib("512M"), Ok(512));
        assert_eq!(parse_size_mib("2g"), Ok(2048));
        assert_eq!(parse_size_mib("64"), Ok(64));
        assert!(parse_size_mib("0").is_err());
        assert!(parse_size_mib("G").is_err());
        assert!(parse_size_mib("lots").is_err());
        assert!(parse_size_mib("99999999999999999999G").is_err());
    }
}
