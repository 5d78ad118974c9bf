//! Where the database is and how to reach it.

use std::{path::PathBuf, time::Duration};

/// Why the database settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not a PostgreSQL connection URL.
    #[error("store_url is not a PostgreSQL URL (postgres://user@host:port/database): {0}")]
    Url(#[source] tokio_postgres::Error),
    /// The password file cannot be read.
    #[error("cannot read the database password file {path}: {source}")]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA file cannot be read or holds no certificate.
    #[error("cannot use the database CA file {path}: {detail}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The URL asks for an `sslmode` this build does not know.
    #[error("store_url's sslmode is not one of disable, prefer, require")]
    SslMode,
}

/// How the connections are made.
pub enum Transport {
    /// In the clear (`sslmode=disable`, or `prefer`, the default).
    Plain,
    /// TLS, the server's certificate checked against the CA file or the Mozilla roots, and its
    /// name against the URL's host (`sslmode=require`).
    Tls(tokio_postgres_rustls::MakeRustlsConnect),
}

/// The database of a [`PostgresStore`](crate::PostgresStore).
#[derive(Clone)]
pub struct PostgresSettings {
    /// `postgres://user[:password]@host:port/database[?options]` (libpq's URL form).
    pub url: String,
    /// A file holding the password, so that it stays out of the URL, the command line and the
    /// environment (one line; a trailing newline is ignored).
    pub password_file: Option<PathBuf>,
    /// Most connections this node keeps open.
    pub pool_size: usize,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
    /// This node's name in the leases it holds (a process id and start time are added, so that
    /// every run is a node of its own); the host name when absent.
    pub node_name: Option<String>,
    /// How long a lease outlives its holder's last renewal: the longest another node waits to
    /// take over the work of a node that died.
    pub lease_ttl: Duration,
    /// PEM certificates of the CAs the database's certificate must chain to, with
    /// `sslmode=require`; the Mozilla roots (webpki-roots) when absent.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("url", &redact(&self.url))
            .field("password_file", &self.password_file)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("node_name", &self.node_name)
            .field("lease_ttl", &self.lease_ttl)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// The URL with any password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split_once(':').map_or(credentials, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

impl PostgresSettings {
    /// Settings for `url` with the defaults: no password file, 16 connections, 10 s to connect.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            password_file: None,
            pool_size: 16,
            connect_timeout: crate::DEFAULT_CONNECT_TIMEOUT,
            node_name: None,
            lease_ttl: Duration::from_secs(10),
            ca_file: None,
        }
    }

    /// How to connect: TLS when the URL says `sslmode=require`.
    pub fn transport(&self) -> Result<Transport, ConnectError> {
        let config: tokio_postgres::Config = self.url.parse().map_err(ConnectError::Url)?;
        match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable | tokio_postgres::config::SslMode::Prefer => {
                Ok(Transport::Plain)
            }
            tokio_postgres::config::SslMode::Require => Ok(Transport::Tls(self.tls()?)),
            _ => Err(ConnectError::SslMode),
        }
    }

    fn tls(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, ConnectError> {
        use rustls_pki_types::{CertificateDer, pem::PemObject as _};
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                let ca_error = |detail: String| ConnectError::CaFile {
                    path: path.clone(),
                    detail,
                };
                for certificate in
                    CertificateDer::pem_file_iter(path).map_err(|e| ca_error(e.to_string()))?
                {
                    roots
                        .add(certificate.map_err(|e| ca_error(e.to_string()))?)
                        .map_err(|e| ca_error(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(ca_error("no certificate in it".into()));
                }
            }
            None => roots.extend(webpki_roots_anchors()),
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConnectError::CaFile {
                path: PathBuf::new(),
                detail: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }

    /// The holder name of this process's leases: node name, process id, start time.
    pub fn node_id(&self) -> String {
        let name = self.node_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|host| host.trim().to_owned())
                .filter(|host| !host.is_empty())
                .unwrap_or_else(|| "node".into())
        });
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{name}/{}/{started:x}", std::process::id())
    }

    /// The driver's configuration: the URL, the password from its file, usm's application name.
    pub fn tokio_config(&self) -> Result<tokio_postgres::Config, ConnectError> {
        let mut config: tokio_postgres::Config = self.url.parse().map_err(ConnectError::Url)?;
        if matches!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        ) {
            // `prefer` would try TLS and fail on a certificate it cannot check: usm connects
            // in the clear unless told `require`, and then checks the certificate.
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        }
        if let Some(path) = &self.password_file {
            let password =
                std::fs::read_to_string(path).map_err(|source| ConnectError::PasswordFile {
                    path: path.clone(),
                    source,
                })?;
            config.password(password.trim_end_matches(['\r', '\n']));
        }
        if config.get_application_name().is_none() {
            config.application_name("usm");
        }
        config.connect_timeout(self.connect_timeout);
        Ok(config)
    }
}

/// The Mozilla roots, for a database whose certificate a public CA signed.
fn webpki_roots_anchors() -> impl Iterator<Item = rustls_pki_types::TrustAnchor<'static>> {
    webpki_roots::TLS_SERVER_ROOTS.iter().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://usm:secret@db:5432/usm?sslmode=disable"),
            "postgres://usm:***@db:5432/usm?sslmode=disable"
        );
        assert_eq!(redact("postgres://usm@db/usm"), "postgres://usm:***@db/usm");
        assert_eq!(redact("host=db user=usm"), "host=db user=usm");
    }

    #[test]
    fn the_password_comes_from_its_file() {
        let dir = std::env::temp_dir().join(format!("usm-pg-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.join("password");
        std::fs::write(&file, "s3cret\n").unwrap_or_else(|e| panic!("{e}"));
        let settings = PostgresSettings {
            password_file: Some(file),
            ..PostgresSettings::new("postgres://usm@127.0.0.1:5432/usm")
        };
        let config = settings.tokio_config().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(config.get_application_name(), Some("usm"));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn bad_urls_and_ca_files_are_refused_with_a_reason() {
        let missing = PostgresSettings {
            ca_file: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..PostgresSettings::new("postgres://usm@db/usm?sslmode=require")
        };
        assert!(matches!(
            missing.transport(),
            Err(ConnectError::CaFile { .. })
        ));
        assert!(matches!(
            PostgresSettings::new("postgres://usm@db/usm?sslmode=require").transport(),
            Ok(Transport::Tls(_))
        ));
        assert!(matches!(
            PostgresSettings::new("postgres://usm@db/usm").transport(),
            Ok(Transport::Plain)
        ));
        assert!(matches!(
            PostgresSettings::new("postgres://usm@db:notaport/usm").tokio_config(),
            Err(ConnectError::Url(_))
        ));
    }
}
