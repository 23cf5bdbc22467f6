use std::collections::HashMap;
use std::path::Path;

use super::{load_str, Diagnostic, SpecError};

const KEY_A: &str = "sk-or-v1-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const KEY_B: &str = "sk-or-v1-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn env() -> HashMap<String, String> {
    HashMap::from([
        ("KEY_A".to_string(), KEY_A.to_string()),
        ("KEY_B".to_string(), KEY_B.to_string()),
        ("BAD_KEY".to_string(), "sk-or-v1-123".to_string()),
    ])
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match load_str(Path::new("tenants.yaml"), text, &env()) {
        Ok(_) => panic!("expected errors"),
        Err(SpecError::Invalid { diagnostics, .. }) => diagnostics,
        Err(e) => panic!("unexpected {e}"),
    }
}

const GOOD: &str = r#"version: 1
fleet: mai-production
defaults:
  image: mai/open-webui:2025.07
  markup_rate: 1.3
  env: { LOG_LEVEL: INFO }
  resources: { memory: 2g, cpus: 1.0 }
hosts:
  - name: hel1-a
    docker: unix:///var/run/docker.sock
    data_root: /srv/mai-fleet
tenants:
  - id: kancelaria-nowak
    name: Kancelaria Nowak Sp. k.
    org_id: nowak_4f2a
    host: hel1-a
    openrouter: { api_key: "${env:KEY_A}" }
    billing: { markup_rate: 1.5, monthly_limit_usd: 150, email: faktury@nowak.pl, nip: "5260250274" }
    port: 3001
    env: { LOG_LEVEL: DEBUG, EXTRA: "x" }
  - id: biuro-kowalski
    name: Biuro Kowalski
    org_id: kowalski_77
    host: hel1-a
    timezone: Europe/London
    openrouter: { api_key: "${env:KEY_B}" }
    port: 3002
"#;

#[test]
fn good_spec_merges_defaults_and_resolves_keys() {
    let spec = load_str(Path::new("tenants.yaml"), GOOD, &env()).expect("valid");
    assert_eq!(spec.fleet, "mai-production");
    let nowak = &spec.tenants[0];
    assert_eq!(nowak.markup_rate.to_string(), "1.5");
    assert_eq!(nowak.env["LOG_LEVEL"], "DEBUG");
    assert_eq!(nowak.memory_bytes, Some(2 << 30));
    assert_eq!(nowak.timezone, "Europe/Warsaw");
    let env = nowak.container_env();
    assert_eq!(env["OPENROUTER_API_KEY"], KEY_A);
    assert_eq!(env["OPENROUTER_EXTERNAL_USER"], "nowak_4f2a");
    assert_eq!(env["ORGANIZATION_NAME"], "Kancelaria Nowak Sp. k.");
    assert_eq!(env["TZ"], "Europe/Warsaw");
    let kowalski = &spec.tenants[1];
    assert_eq!(kowalski.markup_rate.to_string(), "1.3");
    assert_eq!(kowalski.env["LOG_LEVEL"], "INFO");
    assert_eq!(kowalski.timezone, "Europe/London");
    // The key never shows in debug output.
    assert!(!format!("{spec:?}").contains(KEY_A));
    assert!(format!("{:?}", nowak.api_key.as_ref().unwrap()).ends_with("aaa"));
}

#[test]
fn a_dozen_mistakes_give_a_dozen_located_errors() {
    let text = r#"version: 1
defaults:
  image: mai/open-webui:2025.07
  imgae: typo
hosts:
  - name: hel1-a
    docker: unix:///var/run/docker.sock
    data_root: srv/relative
tenants:
  - id: Bad_ID
    name: A
    org_id: a_1
    host: hel1-b
    openrouter: { api_key: "${env:MISSING_VAR}" }
    port: 3001
  - id: tenant-b
    name: B
    org_id: a_1
    host: hel1-a
    openrouter: { api_key: "sk-or-v1-inline" }
    billing: { markup_rate: 0.9, nip: "5260250275", email: nope }
    port: 3001
    env: { OPENROUTER_API_KEY: x }
  - id: tenant-c
    name: C
    org_id: c_1
    host: hel1-a
    timezone: Europe/Warszawa
    openrouter: { api_key: "${env:BAD_KEY}" }
    port: 80
    colour: blue
"#;
    let errs = errors(text);
    let lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let joined = lines.join("\n");
    let expect = [
        "tenants.yaml:4:3: unknown key `imgae` in defaults (did you mean `image`?)",
        "tenants.yaml:8:16: `hosts[0].data_root` value `srv/relative` is not an absolute path",
        "tenants.yaml:10:9: tenant Bad_ID: `id` value `Bad_ID` is not valid",
        "tenants.yaml:13:11: tenant Bad_ID: unknown host `hel1-b` (did you mean `hel1-a`?)",
        "tenant Bad_ID: `openrouter.api_key`: environment variable MISSING_VAR is not set",
        "tenants.yaml:20:28: tenant tenant-b: `openrouter.api_key` is written inline",
        "tenants.yaml:18:13: tenant tenant-b: org_id `a_1` is used twice (first at line 12)",
        "tenant tenant-b: `billing.markup_rate` value `0.9` is not valid",
        "tenant tenant-b: `billing.nip` value `5260250275` is not valid",
        "tenant tenant-b: `billing.email` value `nope` is not valid",
        "tenant tenant-b: `env` may not set OPENROUTER_API_KEY",
        "tenant tenant-c: `timezone` value `Europe/Warszawa` is not valid",
        "tenant tenant-c: `openrouter.api_key` from ${env:BAD_KEY} is not an OpenRouter API key",
        "tenant tenant-c: `port` value `80` is not valid",
        "tenants.yaml:31:5: tenant tenant-c: unknown key `colour` in a tenant",
    ];
    for e in expect {
        assert!(joined.contains(e), "missing {e:?} in\n{joined}");
    }
    assert_eq!(errs.len(), expect.len(), "{joined}");
    assert!(
        !joined.contains("sk-or-v1-inline"),
        "inline key echoed:\n{joined}"
    );
}

#[test]
fn duplicates_across_tenants_name_both_places() {
    let text = GOOD
        .replace("org_id: kowalski_77", "org_id: nowak_4f2a")
        .replace("port: 3002", "port: 3001");
    let joined: Vec<String> = errors(&text).iter().map(ToString::to_string).collect();
    assert_eq!(joined.len(), 2, "{joined:?}");
    assert!(
        joined[0].contains("org_id `nowak_4f2a` is used twice (first at line 15)"),
        "{joined:?}"
    );
    assert!(
        joined[1]
            .contains("port 3001 on host hel1-a is taken by tenant kancelaria-nowak (line 19)"),
        "{joined:?}"
    );
}

#[test]
fn syntax_error_is_located() {
    let errs = errors("version: 1\nhosts:\n  - name: a\n   bad: [\n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].line >= 3, "{}", errs[0]);
    assert!(
        errs[0].message.starts_with("YAML syntax error"),
        "{}",
        errs[0]
    );
}

#[test]
fn empty_file_says_so() {
    let errs = errors("  \n");
    assert_eq!(errs[0].to_string(), "tenants.yaml:1:1: the file is empty (a fleet spec starts with `version: 1` and lists `hosts:` and `tenants:`; see docs/tenants-yaml.md)");
}

#[test]
fn duplicate_key_is_an_error() {
    let errs = errors("version: 1\nversion: 1\nhosts: []\ntenants: []\n");
    assert!(
        errs[0]
            .to_string()
            .starts_with("tenants.yaml:2:1: key `version` appears twice"),
        "{}",
        errs[0]
    );
}

#[test]
fn file_secret_is_read_relative_to_the_spec() {
    let dir = std::env::temp_dir().join(format!("mai-fleet-spec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("nowak.key"), format!("{KEY_A}\n")).unwrap();
    // Owner-only, as a secret file must be.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("nowak.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let text = GOOD.replace("${env:KEY_A}", "${file:nowak.key}");
    let spec = load_str(&dir.join("tenants.yaml"), &text, &env()).expect("valid");
    assert_eq!(spec.tenants[0].api_key.as_ref().unwrap().expose(), KEY_A);
    let missing = GOOD.replace("${env:KEY_A}", "${file:absent.key}");
    let err = load_str(&dir.join("tenants.yaml"), &missing, &env()).unwrap_err();
    assert!(err.to_string().contains("1 error"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Attack surface of the spec itself (issue 9): one key billed to two clients, a
/// secret in a file everybody may read, a plain tcp:// engine behind a name.
#[test]
fn secrets_stay_secret_in_the_spec() {
    let twice = GOOD.replace("${env:KEY_B}", "${env:KEY_A}");
    let e = errors(&twice);
    assert!(
        e.iter()
            .any(|d| d.message.contains("also tenant kancelaria-nowak's")
                && d.tenant.as_deref() == Some("biuro-kowalski")),
        "{e:?}"
    );

    let dir = std::env::temp_dir().join(format!("mai-spec-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("key");
    std::fs::write(&file, KEY_B).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let from_file = GOOD.replace("${env:KEY_B}", &format!("${{file:{}}}", file.display()));
    let e = errors(&from_file);
    assert!(
        e.iter()
            .any(|d| d.message.contains("readable by group or others")
                && d.message.contains("chmod 600")),
        "{e:?}"
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(load_str(Path::new("tenants.yaml"), &from_file, &env()).is_ok());

    for (url, ok) in [
        ("tcp://127.0.0.1:2375", true),
        ("tcp://[::1]:2375", true),
        ("tcp://localhost:2375", false),
        ("tcp://localhost.evil.example:2375", false),
        ("tcp://10.0.0.5:2375", false),
    ] {
        let text = GOOD.replace("unix:///var/run/docker.sock", url);
        let r = load_str(Path::new("tenants.yaml"), &text, &env());
        assert_eq!(r.is_ok(), ok, "{url}: {:?}", r.err());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn env_values_from_references_are_stored_as_their_reference() {
    let text = GOOD.replace(
        "env: { LOG_LEVEL: DEBUG, EXTRA: \"x\" }",
        "env: { LOG_LEVEL: DEBUG, SMTP_PASSWORD: \"${env:KEY_B}\" }",
    );
    let text = text.replace(
        "${env:KEY_B}\" }\n    port: 3002",
        "${env:KEY_C}\" }\n    port: 3002",
    );
    let mut vars = env();
    vars.insert("KEY_C".into(), format!("sk-or-v1-{}", "c".repeat(64)));
    let spec = load_str(Path::new("tenants.yaml"), &text, &vars).expect("valid");
    let nowak = &spec.tenants[0];
    assert_eq!(
        nowak.env["SMTP_PASSWORD"], KEY_B,
        "the container gets the value"
    );
    let record = nowak.env_for_record();
    assert_eq!(record["SMTP_PASSWORD"], "${env:KEY_B}");
    assert_eq!(record["LOG_LEVEL"], "DEBUG");
    let json = serde_json::to_string(nowak).unwrap();
    assert!(!json.contains(KEY_B) && !json.contains(KEY_A), "{json}");
}

/// Issue 13: Windows editors write a byte-order mark; it was reported as an unknown
/// key `\u{feff}version`.
#[test]
fn a_byte_order_mark_is_accepted_and_positions_do_not_move() {
    let with_bom = format!("\u{feff}{GOOD}");
    let spec = load_str(Path::new("tenants.yaml"), &with_bom, &env()).expect("a BOM is no key");
    assert_eq!(spec.fleet, "mai-production");
    let plain = load_str(Path::new("tenants.yaml"), GOOD, &env()).unwrap();
    assert_ne!(
        spec.source_sha256, plain.source_sha256,
        "the hash is of the bytes as read"
    );
    let bad = "\u{feff}version: 1\nfleet: x\nbogus: 1\nhosts: []\ntenants: []\n";
    let diags = errors(bad);
    assert!(
        diags
            .iter()
            .any(|d| d.line == 3 && d.column == 1 && d.message.contains("bogus")),
        "{diags:?}"
    );
}

/// `provision: true` (issue 12): validate names exactly what the controller's
/// environment lacks, once, where the first provisioned tenant says it.
#[test]
fn provisioned_keys_need_the_master_and_management_keys() {
    let text = GOOD.replace(
        r#"openrouter: { api_key: "${env:KEY_A}" }"#,
        "openrouter: { provision: true, rotate_every: 90d }",
    );
    assert!(text.contains("provision: true"), "fixture changed");
    let e = errors(&text);
    let shown: Vec<String> = e.iter().map(ToString::to_string).collect();
    assert_eq!(e.len(), 2, "{shown:#?}");
    assert!(
        shown[0].contains("MAI_FLEET_MASTER_KEY_FILE is not set"),
        "{shown:#?}"
    );
    assert!(
        shown[1].contains("neither MAI_FLEET_OPENROUTER_MANAGEMENT_KEY nor MAI_FLEET_OPENROUTER_MANAGEMENT_KEY_FILE is set"),
        "{shown:#?}"
    );
    // Both stand where `provision` is written.
    assert_eq!((e[0].line, e[0].column), (e[1].line, e[1].column));

    let dir = std::env::temp_dir().join(format!("mai-fleet-master-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let master = dir.join("master.key");
    std::fs::write(&master, [9u8; 32]).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&master, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut with = env();
    with.insert(
        "MAI_FLEET_MASTER_KEY_FILE".into(),
        master.display().to_string(),
    );
    with.insert("MAI_FLEET_OPENROUTER_MANAGEMENT_KEY".into(), "mgmt".into());
    let spec = load_str(Path::new("tenants.yaml"), &text, &with).expect("valid");
    let t = &spec.tenants[0];
    assert!(t.api_key.is_none());
    assert_eq!(
        t.key_source,
        super::KeySource::Provisioned {
            rotate_every: Some(std::time::Duration::from_secs(90 * 86400))
        }
    );
    // A master key the group may read, or too short, is refused with the reason.
    std::fs::set_permissions(&master, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = load_str(Path::new("tenants.yaml"), &text, &with).unwrap_err();
    assert!(format!("{err:?}").contains("chmod 600"), "{err:?}");
    std::fs::write(&master, [9u8; 16]).unwrap();
    std::fs::set_permissions(&master, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = load_str(Path::new("tenants.yaml"), &text, &with).unwrap_err();
    assert!(
        format!("{err:?}").contains("16 byte(s), at least 32"),
        "{err:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn key_settings_that_contradict_each_other_are_errors() {
    let both = GOOD.replace(
        r#"openrouter: { api_key: "${env:KEY_A}" }"#,
        r#"openrouter: { api_key: "${env:KEY_A}", provision: true }"#,
    );
    let shown: Vec<String> = errors(&both).iter().map(ToString::to_string).collect();
    assert!(
        shown
            .iter()
            .any(|e| e.contains("both `api_key` and `provision: true`")),
        "{shown:#?}"
    );
    let rotate = GOOD.replace(
        r#"openrouter: { api_key: "${env:KEY_A}" }"#,
        r#"openrouter: { api_key: "${env:KEY_A}", rotate_every: 30d }"#,
    );
    let shown: Vec<String> = errors(&rotate).iter().map(ToString::to_string).collect();
    assert!(
        shown
            .iter()
            .any(|e| e.contains("`openrouter.rotate_every` needs `provision: true`")),
        "{shown:#?}"
    );
    let on_limit = GOOD.replace("markup_rate: 1.5,", "markup_rate: 1.5, on_limit: stop,");
    assert_ne!(on_limit, GOOD, "fixture changed");
    let shown: Vec<String> = errors(&on_limit).iter().map(ToString::to_string).collect();
    assert!(
        shown
            .iter()
            .any(|e| e.contains("`billing.on_limit` value `stop` is not valid")),
        "{shown:#?}"
    );
}

#[test]
fn agents_are_deployed_by_default_once_the_section_says_where_the_database_is() {
    let with_agents = GOOD.replace(
        "hosts:\n  - name: hel1-a\n    docker: unix:///var/run/docker.sock\n    data_root: /srv/mai-fleet\n",
        "agents: { database_url: \"postgres://db.internal:5432/mai_fleet?sslmode=verify-full\", interval: 30s }\n\
         hosts:\n  - name: hel1-a\n    docker: unix:///var/run/docker.sock\n    data_root: /srv/mai-fleet\n\
         \x20 - name: hel1-b\n    docker: ssh://deploy@10.0.0.2:2222\n    data_root: /srv/mai-fleet\n    agent: false\n\
         \x20 - name: hel1-c\n    docker: ssh://deploy@10.0.0.3\n    data_root: /srv/mai-fleet\n\
         \x20   agent: { database_url: \"postgres://10.0.0.1:5432/mai_fleet?sslmode=verify-ca\" }\n",
    );
    let spec = load_str(Path::new("tenants.yaml"), &with_agents, &env()).expect("valid");
    match &spec.hosts[0].agent {
        super::HostAgent::Deployed(a) => {
            assert_eq!(a.image, super::default_agent_image());
            assert_eq!(a.interval.as_secs(), 30);
            assert!(a.database_url.starts_with("postgres://db.internal"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(spec.hosts[1].agent, super::HostAgent::External));
    match &spec.hosts[2].agent {
        super::HostAgent::Deployed(a) => {
            assert!(a.database_url.starts_with("postgres://10.0.0.1"));
            assert_eq!(a.interval.as_secs(), 30, "the rest from `agents:`");
        }
        other => panic!("{other:?}"),
    }
    // Without the section, agents are run another way.
    let spec = load_str(Path::new("tenants.yaml"), GOOD, &env()).expect("valid");
    assert!(matches!(spec.hosts[0].agent, super::HostAgent::External));
}

#[test]
fn agent_and_ssh_mistakes_are_located() {
    let bad = GOOD.replace(
        "hosts:\n  - name: hel1-a\n    docker: unix:///var/run/docker.sock\n    data_root: /srv/mai-fleet\n",
        "agents: { database_url: \"postgres://fleet:pw@db.internal/mai_fleet?sslmode=require\" }\n\
         hosts:\n  - name: hel1-a\n    docker: unix:///var/run/docker.sock\n    data_root: /srv/mai-fleet\n    ssh: { key: /nonexistent }\n\
         \x20 - name: hel1-b\n    docker: ssh://-oProxyCommand=x\n    data_root: /srv/mai-fleet\n    agent: maybe\n",
    );
    let e = errors(&bad);
    let text: Vec<String> = e
        .iter()
        .map(|d| format!("{}:{} {}", d.line, d.column, d.message))
        .collect();
    let all = text.join("\n");
    assert!(all.contains("agents.database_url"), "{all}");
    assert!(all.contains("hosts[0].ssh.key`: cannot read"), "{all}");
    assert!(all.contains("not a valid ssh:// endpoint"), "{all}");
    assert!(
        all.contains("`hosts[1].agent` must be true, false"),
        "{all}"
    );
}

/// Issue 21: a host is a Docker engine or a Kubernetes node; the node's settings are
/// checked with line and column like the rest, every mistake at once.
#[test]
fn kubernetes_hosts_are_read_and_their_mistakes_located() {
    let good = GOOD.replace(
        "    docker: unix:///var/run/docker.sock\n",
        "    kubernetes: { node: fsn1-k1, context: k3s-fsn1 }\n",
    );
    let spec = load_str(Path::new("tenants.yaml"), &good, &env()).expect("valid");
    let k = spec.hosts[0]
        .kubernetes
        .as_ref()
        .expect("a kubernetes host");
    assert_eq!(k.node, "fsn1-k1");
    assert_eq!(k.context.as_deref(), Some("k3s-fsn1"));
    assert_eq!(k.namespace, "mai-mai-production");
    assert!(k.kubeconfig.is_none());
    assert_eq!(spec.hosts[0].docker, "");

    let bad = GOOD.replace(
        "    docker: unix:///var/run/docker.sock\n",
        "    docker: unix:///var/run/docker.sock\n    kubernetes:\n      nodes: fsn1-k1\n      namespace: Mai_Prod\n      kubeconfig: missing-kubeconfig\n",
    );
    let got: Vec<String> = errors(&bad).iter().map(|d| d.to_string()).collect();
    let want = [
        "tenants.yaml:10:13: `hosts[0].docker` is set on a Kubernetes host",
        "tenants.yaml:12:7: unknown key `nodes` in hosts[0].kubernetes (did you mean `node`?)",
        "tenants.yaml:12:12: missing `hosts[0].kubernetes.node`",
        "tenants.yaml:13:18: `hosts[0].kubernetes.namespace` value `Mai_Prod` is not valid (a DNS label",
        "tenants.yaml:14:19: `hosts[0].kubernetes.kubeconfig`: cannot read missing-kubeconfig",
    ];
    for w in want {
        assert!(got.iter().any(|g| g.starts_with(w)), "{w} not in {got:#?}");
    }
}

/// A node host's tenants may keep their data on claims of a storage class instead of
/// the node's `data_root`; the class and the size are checked like the rest.
#[test]
fn a_storage_class_for_a_node_hosts_data_is_read_and_its_mistakes_located() {
    let good = GOOD.replace(
        "    docker: unix:///var/run/docker.sock\n",
        "    kubernetes: { node: fsn1-k1, storage: { class: local-path } }\n",
    );
    let spec = load_str(Path::new("tenants.yaml"), &good, &env()).expect("valid");
    let k = spec.hosts[0]
        .kubernetes
        .as_ref()
        .expect("a kubernetes host");
    let s = k.storage.as_ref().expect("storage");
    assert_eq!((s.class.as_str(), s.size.as_str()), ("local-path", "10Gi"));
    let sized = GOOD.replace(
        "    docker: unix:///var/run/docker.sock\n",
        "    kubernetes: { node: fsn1-k1, storage: { class: hcloud-volumes, size: 25Gi } }\n",
    );
    let spec = load_str(Path::new("tenants.yaml"), &sized, &env()).expect("valid");
    let s = spec.hosts[0]
        .kubernetes
        .as_ref()
        .and_then(|k| k.storage.clone());
    assert_eq!(s.map(|s| s.size), Some("25Gi".to_string()));

    let bad = GOOD.replace(
        "    docker: unix:///var/run/docker.sock\n",
        "    kubernetes:\n      node: fsn1-k1\n      storage: { clas: x, size: 10GB }\n",
    );
    let got: Vec<String> = errors(&bad).iter().map(|d| d.to_string()).collect();
    let want = [
        "tenants.yaml:12:18: unknown key `clas` in hosts[0].kubernetes.storage (did you mean `class`?)",
        "tenants.yaml:12:16: missing `hosts[0].kubernetes.storage.class`",
        "tenants.yaml:12:33: `hosts[0].kubernetes.storage.size` value `10GB` is not valid",
    ];
    for w in want {
        assert!(got.iter().any(|g| g.starts_with(w)), "{w} not in {got:#?}");
    }
    let docker = GOOD.replace(
        "    docker: unix:///var/run/docker.sock\n",
        "    docker: unix:///var/run/docker.sock\n    storage: { class: x }\n",
    );
    let got: Vec<String> = errors(&docker).iter().map(|d| d.to_string()).collect();
    assert!(
        got.iter()
            .any(|g| g.contains("unknown key `storage` in hosts[0]")),
        "{got:#?}"
    );
}

#[test]
fn invoicing_is_read_and_its_mistakes_located_all_at_once() {
    let good = format!(
        "{GOOD}invoicing:\n  seller: {{ nip: \"774-000-14-54\", name: \"mAI Sp. z o.o.\", address: \"ul. Przykładowa 1, 00-001 Warszawa\" }}\n  currency: USD\n  vat_rate: 8\n  ksef: {{ environment: demo, token: \"${{env:KEY_A}}\" }}\n"
    );
    let spec = load_str(Path::new("tenants.yaml"), &good, &env()).expect("valid");
    let inv = spec.invoicing.expect("invoicing");
    assert_eq!(inv.seller.nip, "7740001454");
    assert_eq!(inv.number, "FV/{yyyy}/{mm}/{seq}");
    assert_eq!((inv.currency.as_str(), inv.vat_rate), ("USD", 8));
    let ksef = inv.ksef.expect("ksef");
    assert_eq!(ksef.environment.as_str(), "demo");
    assert!(
        !format!("{ksef:?}").contains(KEY_A),
        "the token is never shown"
    );

    let bad = format!(
        "{GOOD}invoicing:\n  seller: {{ nip: \"7740001455\", name: \"mAI\" }}\n  number: \"FV/{{seq}}\"\n  currency: EUR\n  vat_rate: 7\n  ksef: {{ environment: prod, token: \"inline-token\", url: x }}\n  colour: red\n"
    );
    let errs = errors(&bad);
    let joined = errs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    let expect = [
        "tenants.yaml:29:11: missing `invoicing.seller.address`",
        "tenants.yaml:29:18: `invoicing.seller.nip` value `7740001455` is not valid",
        "tenants.yaml:30:11: `invoicing.number` value `FV/{seq}` is not valid",
        "tenants.yaml:31:13: `invoicing.currency` value `EUR` is not valid",
        "tenants.yaml:32:13: `invoicing.vat_rate` value `7` is not valid",
        "tenants.yaml:33:24: `invoicing.ksef.environment` value `prod` is not valid",
        "tenants.yaml:33:37: `invoicing.ksef.token` is written inline",
        "tenants.yaml:33:53: unknown key `url` in invoicing.ksef",
        "tenants.yaml:34:3: unknown key `colour` in invoicing",
    ];
    for e in expect {
        assert!(joined.contains(e), "missing {e:?} in\n{joined}");
    }
    assert_eq!(errs.len(), expect.len(), "{joined}");
    assert!(!joined.contains("inline-token"), "{joined}");
}
