//! Docker endpoints as the spec names them.

use mai_fleet_core::Invalid;

/// Where an `ssh://` URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub user: Option<String>,
    pub host: String,
    pub port: u16,
    /// The engine's socket on the remote machine.
    pub socket: String,
}

pub const DEFAULT_REMOTE_SOCKET: &str = "/var/run/docker.sock";

/// A host's `docker:` URL, parsed: the one place its scheme is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerEndpoint {
    /// `unix:///path`: an engine on this machine.
    Unix(String),
    /// `tcp://host:port` (with `tls`, or on loopback).
    Tcp(String),
    Ssh(SshTarget),
}

impl DockerEndpoint {
    pub fn parse(url: &str) -> Result<Self, Invalid> {
        if let Some(path) = url.strip_prefix("unix://") {
            Ok(DockerEndpoint::Unix(path.to_string()))
        } else if let Some(addr) = url.strip_prefix("tcp://") {
            Ok(DockerEndpoint::Tcp(addr.to_string()))
        } else if url.starts_with("ssh://") {
            SshTarget::parse(url).map(DockerEndpoint::Ssh)
        } else {
            Err("use unix://, tcp:// or ssh://".into())
        }
    }

    /// The engine's socket as its own machine sees it (what a host's agent mounts).
    pub fn socket_on_host(&self) -> String {
        match self {
            DockerEndpoint::Unix(path) => path.clone(),
            DockerEndpoint::Ssh(t) => t.socket.clone(),
            DockerEndpoint::Tcp(_) => DEFAULT_REMOTE_SOCKET.to_string(),
        }
    }
}

impl SshTarget {
    pub fn parse(url: &str) -> Result<Self, Invalid> {
        let rest = url
            .strip_prefix("ssh://")
            .ok_or_else(|| "not an ssh:// URL".to_string())?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| "an IPv6 address needs its closing `]`".to_string())?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("port `{p}` is not a number from 1 to 65535"))?,
            None => 22,
        };
        let valid = |s: &str| {
            !s.is_empty()
                && !s.starts_with('-')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c))
        };
        if !valid(&host) {
            return Err(format!("`{host}` is not a host name or address").into());
        }
        if let Some(u) = &user {
            if !valid(u) {
                return Err(format!("`{u}` is not a user name").into());
            }
        }
        if !path.is_empty() && (path.contains("..") || path.contains(char::is_whitespace)) {
            return Err(format!("`{path}` is not a socket path").into());
        }
        Ok(Self {
            user,
            host,
            port,
            socket: if path.is_empty() {
                DEFAULT_REMOTE_SOCKET.to_string()
            } else {
                path.to_string()
            },
        })
    }

    pub fn destination(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }

    /// How known_hosts names this server.
    pub fn known_as(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let t = SshTarget::parse("ssh://deploy@hel1-b.example:2222").unwrap();
        assert_eq!(t.user.as_deref(), Some("deploy"));
        assert_eq!((t.host.as_str(), t.port), ("hel1-b.example", 2222));
        assert_eq!(t.socket, DEFAULT_REMOTE_SOCKET);
        assert_eq!(t.known_as(), "[hel1-b.example]:2222");
        let t = SshTarget::parse("ssh://10.0.0.2/run/user/1000/docker.sock").unwrap();
        assert_eq!((t.user.as_deref(), t.port), (None, 22));
        assert_eq!(t.socket, "/run/user/1000/docker.sock");
        assert_eq!(t.known_as(), "10.0.0.2");
        let t = SshTarget::parse("ssh://root@[fd00::2]:22").unwrap();
        assert_eq!(t.host, "fd00::2");
        // An option smuggled in as a host name never reaches ssh's command line.
        assert!(SshTarget::parse("ssh://-oProxyCommand=x").is_err());
        assert!(SshTarget::parse("ssh://a@b:99999").is_err());
        assert!(SshTarget::parse("ssh://a b@c").is_err());
    }
}
