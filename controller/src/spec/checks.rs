//! Shape checks of single values in tenants.yaml. Each returns `Err(hint)` with
//! what to write instead, so that the caller can locate and report it.

use mai_fleet_core::Invalid;
use rust_decimal::Decimal;

pub use mai_fleet_core::contract::{check_name_label as name_label, check_tenant_id as tenant_id};

/// The organization id the app writes as `client_org_id` and sends to OpenRouter.
pub fn org_id(org: &str) -> Result<(), Invalid> {
    let ok = !org.is_empty()
        && org.len() <= 64
        && org
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err("use 1 to 64 characters of A-Z, a-z, 0-9, '_', '-' and '.'".into())
    }
}

/// `sk-or-v1-` followed by 64 lowercase hex digits (OpenRouter's key format).
pub fn openrouter_key(key: &str) -> Result<(), Invalid> {
    match key.strip_prefix("sk-or-v1-") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => Ok(()),
        Some(_) => Err("an OpenRouter key is 'sk-or-v1-' followed by 64 lowercase hex digits; check that the whole key was copied".into()),
        None => Err("an OpenRouter key starts with 'sk-or-v1-'; check that the variable or file holds the tenant's API key (not a management key)".into()),
    }
}

/// Polish tax id: 10 digits (dashes and spaces allowed) with the mod-11 checksum.
pub fn nip(nip: &str) -> Result<(), Invalid> {
    const WEIGHTS: [u32; 9] = [6, 5, 7, 2, 3, 4, 5, 6, 7];
    let digits: Vec<u32> = nip
        .chars()
        .filter(|c| *c != '-' && *c != ' ')
        .map(|c| c.to_digit(10))
        .collect::<Option<_>>()
        .ok_or_else(|| "a NIP has only digits (dashes and spaces are allowed)".to_string())?;
    if digits.len() != 10 {
        return Err(format!("a NIP has 10 digits, this one has {}", digits.len()).into());
    }
    let sum: u32 = WEIGHTS.iter().zip(&digits).map(|(w, d)| w * d).sum();
    let check = sum % 11;
    if check == 10 || check != digits[9] {
        return Err(
            "its checksum does not match: check the digits against the client's invoice".into(),
        );
    }
    Ok(())
}

/// A NIP as FA(3) writes it: its ten digits, without dashes or spaces.
pub fn nip_digits(nip: &str) -> String {
    nip.chars().filter(char::is_ascii_digit).collect()
}

/// A deliberately plain e-mail shape check: `local@domain.tld`, no spaces.
pub fn email(addr: &str) -> Result<(), Invalid> {
    let hint = || "write an address like faktury@example.pl".to_string();
    let (local, domain) = addr.split_once('@').ok_or_else(hint)?;
    let ok = !local.is_empty()
        && !addr.contains(char::is_whitespace)
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.');
    if ok {
        Ok(())
    } else {
        Err(hint().into())
    }
}

/// Docker image reference: `[registry[:port]/]path[:tag][@sha256:digest]`, path lowercase.
pub fn image_ref(image: &str) -> Result<(), Invalid> {
    let hint = || "write an image like registry.example.com/mai/open-webui:2025.07".to_string();
    if image.is_empty() || image.contains(char::is_whitespace) {
        return Err(hint().into());
    }
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        let ok = d
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return Err("a digest is '@sha256:' followed by 64 hex digits".into());
        }
    }
    // A ':' after the last '/' starts the tag; one before it belongs to a registry port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match rest[last_slash..].find(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return Err("a tag is 1 to 128 characters of A-Z, a-z, 0-9, '_', '.' and '-'".into());
        }
    }
    let mut components = path.split('/').peekable();
    let mut first = true;
    while let Some(c) = components.next() {
        let is_registry = first
            && components.peek().is_some()
            && (c.contains('.') || c.contains(':') || c == "localhost");
        first = false;
        if is_registry {
            continue;
        }
        let ok = !c.is_empty()
            && c.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            && c.ends_with(|ch: char| ch.is_ascii_alphanumeric());
        if !ok {
            return Err(format!("'{c}' is not a valid repository name: use lowercase letters, digits, '.', '_' and '-'").into());
        }
    }
    Ok(())
}

/// Memory like Docker's `--memory`: a number with an optional b, k, m or g suffix.
pub fn memory_bytes(text: &str) -> Result<i64, Invalid> {
    let t = text.trim().to_ascii_lowercase();
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('b') => (&t[..t.len() - 1], 1),
        _ => (t.as_str(), 1),
    };
    let n: i64 = num
        .parse()
        .map_err(|_| "write memory like 512m or 2g".to_string())?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| "that is more memory than any host has".to_string())?;
    if bytes < 6 << 20 {
        return Err("Docker needs at least 6m of memory for a container".into());
    }
    Ok(bytes)
}

/// A size like `500m`, `20g` or `1t` (binary units), in bytes; above 0.
pub fn byte_size(text: &str) -> Result<u64, Invalid> {
    let t = text.trim().to_ascii_lowercase();
    let units: [(char, u32); 5] = [('b', 0), ('k', 10), ('m', 20), ('g', 30), ('t', 40)];
    let (num, shift) = match units.iter().find(|(u, _)| t.ends_with(*u)) {
        Some((_, shift)) => (&t[..t.len() - 1], *shift),
        None => (t.as_str(), 0),
    };
    num.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| "write a size like 500m, 20g or 1t".into())
}

pub fn cpus(text: &str) -> Result<Decimal, Invalid> {
    let d: Decimal = text
        .trim()
        .parse()
        .map_err(|_| "write cpus as a number like 0.5 or 2".to_string())?;
    if d <= Decimal::ZERO || d > Decimal::from(256) {
        return Err("cpus must be above 0 and at most 256".into());
    }
    Ok(d.normalize())
}

pub fn markup_rate(text: &str) -> Result<Decimal, Invalid> {
    let d: Decimal = text
        .trim()
        .parse()
        .map_err(|_| "write the markup as a number like 1.3".to_string())?;
    if d < Decimal::ONE || d > Decimal::from(5) {
        return Err(
            "the markup rate must be from 1.0 to 5.0 (1.3 = 30 % over OpenRouter's cost)".into(),
        );
    }
    Ok(d.normalize())
}

pub fn money_usd(text: &str) -> Result<Decimal, Invalid> {
    let d: Decimal = text
        .trim()
        .parse()
        .map_err(|_| "write an amount in USD like 150 or 99.50".to_string())?;
    if d <= Decimal::ZERO {
        return Err("the limit must be above 0; leave the key out for no limit".into());
    }
    Ok(d.normalize())
}

pub fn timezone(tz: &str) -> Result<(), Invalid> {
    tz.parse::<chrono_tz::Tz>()
        .map(|_| ())
        .map_err(|_| "use an IANA timezone name like Europe/Warsaw".into())
}

pub fn env_name(name: &str) -> Result<(), Invalid> {
    let ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err("variable names are letters, digits and '_', not starting with a digit".into())
    }
}

/// The closest of `candidates` to `word`, if it is a plausible typo of it.
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Where agents reach the fleet database: a `postgres://` URL without credentials
/// (each host's are made by the controller) that checks the server's certificate
/// (`sslmode=verify-full` or `verify-ca`) unless the server is on the agent's own
/// loopback. `require` encrypts but checks no certificate: whoever sits between a host
/// and the database could show any and ask for the agent's password. The query is
/// read as the driver reads it (percent-decoded, with its aliases), and a TLS key
/// given twice is refused: the driver obeys the last, a check reading the first would
/// pass `?sslmode=verify-full&sslmode=disable`.
pub fn agent_database_url(url: &str) -> Result<(), Invalid> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| {
            "write postgres://db.internal:5432/mai_fleet?sslmode=verify-full".to_string()
        })?;
    let (location, _) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = location.split('/').next().unwrap_or(location);
    if authority.contains('@') {
        return Err("leave credentials out: the controller makes each host's own role and password and hands them only to that host's agent".into());
    }
    if location.split('/').nth(1).is_none_or(str::is_empty) {
        return Err(
            "name the database, e.g. postgres://db.internal:5432/mai_fleet?sslmode=verify-full"
                .into(),
        );
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    let host = parsed.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let mut given: Vec<(&'static str, String, String)> = Vec::new();
    for (key, value) in parsed.query_pairs() {
        let canonical = match key.as_ref() {
            "sslmode" | "ssl-mode" => "sslmode",
            "sslrootcert" | "ssl-root-cert" | "ssl-ca" => {
                return Err("name the CA with `ca_file`, not sslrootcert: the file travels into each agent container".into())
            }
            "sslcert" | "ssl-cert" | "sslkey" | "ssl-key" => "sslcert",
            "host" | "hostaddr" | "port" => {
                return Err(format!(
                    "name the server before the `/`, not with `{key}=`: the driver would connect where the check does not look"
                ).into())
            }
            _ => continue,
        };
        if let Some((_, first, _)) = given.iter().find(|(c, _, _)| *c == canonical) {
            return Err(format!(
                "`{canonical}` is given twice (as `{first}` and `{key}`): the driver obeys the last one; write it once"
            ).into());
        }
        given.push((canonical, key.into_owned(), value.into_owned()));
    }
    let sslmode = given
        .iter()
        .find(|(c, _, _)| *c == "sslmode")
        .map_or("prefer", |(_, _, v)| v.as_str());
    if !loopback && !["verify-ca", "verify-full"].contains(&sslmode) {
        let what = if ["require", "allow", "prefer"].contains(&sslmode) {
            "checks no certificate: whoever sits between a host and the database could show any certificate and ask for the agent's password"
        } else {
            "would let an agent's password cross the network in plain text"
        };
        return Err(format!(
            "sslmode={sslmode} {what}; write ?sslmode=verify-full (with `ca_file`)"
        )
        .into());
    }
    Ok(())
}

/// A Kubernetes DNS-1123 label (a namespace): 1 to 63 of a-z, 0-9 and '-', starting
/// and ending with a letter or digit.
pub fn dns_label(name: &str) -> Result<(), Invalid> {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    let ok = (1..=63).contains(&bytes.len())
        && bytes.iter().all(|&b| alnum(b) || b == b'-')
        && bytes.first().copied().is_some_and(alnum)
        && bytes.last().copied().is_some_and(alnum);
    if ok {
        Ok(())
    } else {
        Err("a DNS label: 1 to 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit".to_string().into())
    }
}

/// A Kubernetes DNS-1123 subdomain (a node's name): DNS labels joined by dots, at
/// most 253 characters.
pub fn dns_subdomain(name: &str) -> Result<(), Invalid> {
    if name.len() <= 253 && name.split('.').all(|l| dns_label(l).is_ok()) {
        Ok(())
    } else {
        Err("a node name: DNS labels (a-z, 0-9 and '-', starting and ending with a letter or digit) joined by dots, at most 253 characters".to_string().into())
    }
}

/// A claim's size: a whole number of Mi, Gi or Ti (Kubernetes' binary units).
pub fn claim_size(size: &str) -> Result<(), Invalid> {
    let ok = ["Mi", "Gi", "Ti"].iter().any(|unit| {
        size.strip_suffix(unit).is_some_and(|n| {
            !n.is_empty()
                && !n.starts_with('0')
                && n.len() <= 9
                && n.bytes().all(|b| b.is_ascii_digit())
        })
    });
    if ok {
        Ok(())
    } else {
        Err("a whole number of Mi, Gi or Ti, e.g. `size: 10Gi`"
            .to_string()
            .into())
    }
}

/// `https://host:port`, nothing after the port: where an agent reaches an API server.
pub fn https_host_port(url: &str) -> Result<(), Invalid> {
    let ok = url
        .strip_prefix("https://")
        .and_then(|rest| rest.trim_end_matches('/').rsplit_once(':'))
        .is_some_and(|(host, port)| {
            !host.is_empty()
                && !host.contains(['/', '@', '?'])
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
    if ok {
        Ok(())
    } else {
        Err("an https://host:port URL, e.g. https://10.0.0.1:6443"
            .to_string()
            .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nip_checksum() {
        assert!(nip("5260250274").is_ok());
        assert!(nip("526-025-02-74").is_ok());
        assert!(nip("5260250275").is_err());
        assert!(nip("526025027").is_err());
        assert!(nip("52602502a4").is_err());
    }

    #[test]
    fn image_references() {
        for ok in [
            "mai/open-webui:2025.07",
            "mai-fleet/tenant:dev",
            "localhost:5000/mai/app",
            "ghcr.io/org/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "busybox",
        ] {
            assert!(image_ref(ok).is_ok(), "{ok}");
        }
        for bad in [
            "Mai/App:1",
            "mai/app:",
            "mai//app",
            "mai/app@sha256:12",
            "mai app",
        ] {
            assert!(image_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_and_values() {
        let key = format!("sk-or-v1-{}", "0a".repeat(32));
        assert!(openrouter_key(&key).is_ok());
        assert!(openrouter_key(&key.to_uppercase()).is_err());
        assert!(openrouter_key("sk-or-v1-abc").is_err());
        assert_eq!(memory_bytes("2g"), Ok(2 << 30));
        assert!(memory_bytes("1k").is_err());
        assert!(markup_rate("0.9").is_err());
        assert_eq!(
            markup_rate("1.30").map(|d| d.to_string()),
            Ok("1.3".to_string())
        );
        assert!(timezone("Europe/Warsaw").is_ok());
        assert!(timezone("Europe/Warszawa").is_err());
        assert!(email("faktury@nowak.pl").is_ok());
        assert!(email("faktury.nowak.pl").is_err());
        assert!(tenant_id("a").is_err());
        assert!(tenant_id("kancelaria-nowak").is_ok());
        assert_eq!(suggest("markup", &["markup_rate", "email"]), None);
        assert_eq!(suggest("imgae", &["image", "id"]), Some("image"));
    }

    #[test]
    fn agent_database_urls() {
        assert!(
            agent_database_url("postgres://db.internal:5432/mai_fleet?sslmode=verify-full").is_ok()
        );
        assert!(agent_database_url("postgres://127.0.0.1:5432/mai_fleet").is_ok());
        let plain = agent_database_url("postgres://db.internal:5432/mai_fleet").unwrap_err();
        assert!(plain.0.contains("checks no certificate"), "{plain}");
        let off = agent_database_url("postgres://db.internal/x?sslmode=disable").unwrap_err();
        assert!(off.0.contains("plain text"), "{off}");
        // Encryption without a certificate check, a repeated or aliased mode, an
        // encoded key, a server named in the query: all refused.
        for bad in [
            "postgres://db.internal/x?sslmode=require",
            "postgres://db.internal/x?sslmode=verify-full&sslmode=disable",
            "postgres://db.internal/x?ssl-mode=disable&sslmode=verify-full",
            "postgres://db.internal/x?sslmode=verify-full&ssl%2Dmode=disable",
            "postgres://localhost/x?host=db.evil&sslmode=disable",
        ] {
            assert!(agent_database_url(bad).is_err(), "{bad}");
        }
        assert!(agent_database_url("postgres://[::1]:5432/x").is_ok());
        assert!(agent_database_url(
            "postgres://db.internal/x?sslmode=verify-ca&application_name=a"
        )
        .is_ok());
        let creds =
            agent_database_url("postgres://u:p@db.internal/mai_fleet?sslmode=require").unwrap_err();
        assert!(creds.0.contains("credentials"), "{creds}");
        assert!(agent_database_url("postgres://db.internal:5432/?sslmode=require").is_err());
        assert!(agent_database_url("mysql://db/x").is_err());
        assert!(agent_database_url("postgres://db/x?sslmode=verify-full&sslrootcert=/x").is_err());
    }
}
