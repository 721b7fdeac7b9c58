//! NATS server lists as the settings give them (`log.url`, a NATS source's `url`):
//! `nats://[user:password@]host:port` or `tls://…`, `nats://token@host:port` for a token,
//! user info percent-encoded, several servers separated by commas. One parser for the log
//! and the sources, so both accept the same URLs and use their credentials the same way.

use async_nats::{ConnectOptions, ServerAddr};

/// A server list that cannot be used; `key` names the setting it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NatsUrlError {
    #[error("{key} {entry:?} is not a NATS URL: {reason}")]
    NotAUrl {
        key: &'static str,
        entry: String,
        reason: String,
    },
    #[error("{key} is empty")]
    Empty { key: &'static str },
}

/// The servers of a comma-separated list (blank entries ignored; at least one required).
pub fn servers(url: &str, key: &'static str) -> Result<Vec<ServerAddr>, NatsUrlError> {
    let addrs = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<ServerAddr>().map_err(|e| NatsUrlError::NotAUrl {
                key,
                entry: u.to_owned(),
                reason: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err(NatsUrlError::Empty { key });
    }
    Ok(addrs)
}

/// `options` with the credentials of the first server that has user info: user and password,
/// or a token. async-nats does not use the URL's user info itself.
pub fn with_user_info(options: ConnectOptions, addrs: &[ServerAddr]) -> ConnectOptions {
    let Some(addr) = addrs.iter().find(|a| a.username().is_some()) else {
        return options;
    };
    let user = percent_decode(addr.username().unwrap_or_default());
    match addr.password() {
        Some(pass) => options.user_and_password(user, percent_decode(pass)),
        None => options.token(user),
    }
}

/// `%XX` escapes of a URL's user info decoded (anything malformed is kept as it is).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_user_info_is_decoded() {
        assert_eq!(percent_decode("p%40ss%3Aw0rd"), "p@ss:w0rd");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn server_lists() {
        assert_eq!(
            servers("nats://a:4222, tls://b:4222,", "url")
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            servers(" , ", "log.url").unwrap_err().to_string(),
            "log.url is empty"
        );
        assert!(servers("nats://a:4222,http://[", "url").is_err());
    }
}
