//! A node starts from `popmesh.toml`, which an installer wrote, an operator edited, and a bad disk or a bad edit
//! may have damaged. Whatever the file holds, reading it never panics the node and never holds more than the file
//! is worth: it is refused with a reason, or it gives settings that pass the node's own checks and write back
//! to the same settings; the template and every role's example file give exactly what they say.
//!
//! `POPMESH_FUZZ_SECS=N` runs the story for N seconds instead (see `crdt/tests/support/fuzz.rs`,
//! `bench/fuzz-long.sh`).

#[path = "../../crdt/tests/support/fuzz.rs"]
mod fuzz;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use fuzz::{bounded, fuzz, hostile_text};
use popmesh_node::config::{
    Alerts, Api, Config, Escrow, Log, LogFormat, Media, P2p, Payments, TEMPLATE, TelemetryConfig,
    Uplink, Warehouse,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseResult;

/// Cases in CI.
const CASES: u32 = 2048;
/// A TOML integer: what a config file can say at all.
const TOML_INT_MAX: u64 = i64::MAX as u64;

fn int() -> impl Strategy<Value = u64> {
    prop_oneof![0..100_000u64, 0..=TOML_INT_MAX]
}

fn socket() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
    ]
    .prop_flat_map(|ip| any::<u16>().prop_map(move |port| SocketAddr::new(ip, port)))
}

/// Multiaddrs as the site writes them (and a few it could).
fn multiaddr() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| format!("/ip4/{}/tcp/{port}", Ipv4Addr::from(ip))),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| format!("/ip6/{}/udp/{port}/quic-v1", Ipv6Addr::from(ip))),
        ("[a-z][a-z0-9-]{0,20}(\\.[a-z]{2,6})?", any::<u16>())
            .prop_map(|(host, port)| format!("/dns4/{host}/tcp/{port}")),
        any::<[u8; 32]>().prop_map(|seed| {
            let device = popmesh_crdt::SecretKey::from_seed(seed).public();
            let peer = popmesh_transport::identity::peer_id(&device).expect("ed25519");
            format!("/ip4/10.0.0.1/tcp/4701/p2p/{peer}")
        }),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    let host = prop_oneof![Just("pos-1.harbour.example".to_owned()), "[a-z]{1,12}"];
    let origin = prop_oneof![
        Just("https://kiosk.harbour.example".to_owned()),
        Just("http://127.0.0.1:7700".to_owned())
    ];
    let api = (
        socket(),
        prop::collection::vec(host, 0..3),
        prop::collection::vec(origin, 0..2),
        any::<bool>(),
    )
        .prop_map(
            |(listen, allowed_hosts, allowed_origins, loopback_without_token)| Api {
                listen,
                loopback_without_token,
                tls_listen: None,
                tls_cert: None,
                tls_key: None,
                allowed_hosts,
                allowed_origins,
            },
        );
    let p2p = (
        prop::collection::vec(multiaddr(), 0..3),
        prop::collection::vec(multiaddr(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(listen, bootstrap, mdns)| P2p {
            listen,
            bootstrap,
            mdns,
        });
    let log = (any::<bool>(), "\\PC{0,30}").prop_map(|(json, filter)| Log {
        format: if json {
            LogFormat::Json
        } else {
            LogFormat::Text
        },
        filter,
    });
    let escrow = (int(), int()).prop_map(|(low_water, rebalance_every_secs)| Escrow {
        low_water,
        rebalance_every_secs,
    });
    let payments = ("[A-Z]{3}|\\PC{0,5}", int(), int(), int(), int()).prop_map(
        |(currency, payment_max_minor, stored_total_max_minor, stale_after_hours, page)| Payments {
            currency,
            payment_max_minor,
            stored_total_max_minor,
            stale_after_hours,
            receipts_per_page: page as usize,
        },
    );
    let media = (
        any::<u16>(),
        1..=TOML_INT_MAX,
        1..=TOML_INT_MAX,
        int(),
        any::<bool>(),
        int(),
        (int(), int()),
    )
        .prop_map(
            |(
                port,
                preseed_every_secs,
                gc_every_secs,
                default_ttl_hours,
                verify_on_start,
                upload_limit_mib_s,
                (upload_max_mib, reserve_mib),
            )| Media {
                port,
                preseed_every_secs,
                gc_every_secs,
                default_ttl_hours,
                verify_on_start,
                upload_limit_mib_s,
                upload_max_mib,
                reserve_mib,
            },
        );
    let telemetry = (
        int(),
        1..=u32::MAX,
        prop::collection::vec("\\PC{0,12}", 0..5),
    )
        .prop_map(
            |(events_per_sec_max, sample_one_in, conversion)| TelemetryConfig {
                events_per_sec_max,
                sample_one_in,
                conversion,
            },
        );
    let alerts = (int(), int(), int(), int(), int()).prop_map(|(a, b, c, d, e)| Alerts {
        unreconciled_max_minor: a,
        preseed_min_percent: b,
        peers_min: c,
        peer_silent_max_secs: d,
        outage_max_secs: e,
    });
    let uplink = int().prop_map(|limit_kib_s| Uplink { limit_kib_s });
    let warehouse = (
        prop_oneof![
            Just(String::new()),
            Just("postgresql://popmesh@localhost/shows".to_owned())
        ],
        1usize..64,
        1usize..1_000_000,
        1..=TOML_INT_MAX,
    )
        .prop_map(
            |(postgres_url, pool_size, queue_max, retry_every_secs)| Warehouse {
                postgres_url,
                pool_size,
                queue_max,
                retry_every_secs,
            },
        );
    (
        (
            api, p2p, log, escrow, payments, media, telemetry, alerts, uplink,
        ),
        warehouse,
    )
        .prop_map(
            |((api, p2p, log, escrow, payments, media, telemetry, alerts, uplink), warehouse)| {
                Config {
                    api,
                    p2p,
                    log,
                    escrow,
                    payments,
                    media,
                    telemetry,
                    alerts,
                    uplink,
                    warehouse,
                }
            },
        )
}

/// The files the project ships: the template, every role's example, and settings written out by the node's own
/// serializer. `None` for the settings a shipped file means (they are read, not restated here).
fn config_file() -> impl Strategy<Value = (Option<Config>, String)> {
    let shipped = prop::sample::select(vec![
        TEMPLATE,
        include_str!("../../deploy/config/edge.toml"),
        include_str!("../../deploy/config/kiosk.toml"),
        include_str!("../../deploy/config/pos.toml"),
        include_str!("../../deploy/config/origin.toml"),
    ])
    .prop_map(|text| (None, text.to_owned()));
    let written = config().prop_map(|c| {
        let text = toml::to_string(&c).expect("settings serialize");
        (Some(c), text)
    });
    prop_oneof![1 => shipped, 2 => written]
}

/// Words of TOML and of a popmesh config.
const TOML_WORDS: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
    "=",
    "\"",
    "'",
    "'''",
    "\"\"\"",
    "#",
    "\n",
    "\r\n",
    "\r",
    ",",
    "{",
    "}",
    ".",
    " ",
    "\t",
    "\\",
    "\\u00e9",
    "\\uD800",
    "\\U0010FFFF",
    "\\U00110000",
    "[api]",
    "[p2p]",
    "[log]",
    "[escrow]",
    "[payments]",
    "[media]",
    "[telemetry]",
    "[alerts]",
    "[uplink]",
    "[api.listen]",
    "[[p2p]]",
    "listen",
    "bootstrap",
    "mdns",
    "sample_one_in",
    "port",
    "= 0",
    "= 1",
    "= -1",
    "= 65536",
    "= 9223372036854775807",
    "= 9223372036854775808",
    "= 1e999",
    "= inf",
    "= nan",
    "= -0.0",
    "= 0x7fffffffffffffff",
    "= 0o777",
    "= 0b1",
    "= 1_000",
    "= 1979-05-27",
    "= 07:32:00",
    "= true",
    "= []",
    "= {}",
    "= [[]]",
    "\"127.0.0.1:0\"",
    "\"[::1]:7700\"",
    "\"[fe80::1%2]:1\"",
    "\"/ip4/1.2.3.4/tcp/1\"",
    "\"/dns4/x/tcp/1\"",
    "\"/unix/%2Ftmp\"",
    "\"/onion3/",
    "\"/garlic64/",
    "\"/p2p/",
    "\"/certhash/",
    "\"/ip6zone/",
    "\"/memory/",
    "\"/ip4/1.2.3.4/udp/1/quic-v1/webtransport/certhash/uEi",
    "\"/http-path/%2F",
    "/",
    "%",
    "\u{feff}",
    "\u{0}",
    "é",
];

/// Deep nesting and long values, which a recursive reader or a careless bound would not survive.
fn deep_file() -> impl Strategy<Value = (Option<Config>, String)> {
    (0..3usize, 1..20_000usize).prop_map(|(kind, depth)| {
        let text = match kind {
            0 => format!(
                "[p2p]\nlisten = {}{}\n",
                "[".repeat(depth),
                "]".repeat(depth)
            ),
            1 => format!(
                "[log]\nfilter = {}1{}\n",
                "{a = ".repeat(depth),
                "}".repeat(depth)
            ),
            _ => format!(
                "[p2p]\nbootstrap = [\"/ip4/1.2.3.4/tcp/1{}\"]\n",
                "/tcp/1".repeat(depth)
            ),
        };
        (None, text)
    })
}

/// Values of every TOML type, and of none, for any key.
const VALUES: &[&str] = &[
    "0",
    "1",
    "-1",
    "255",
    "256",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "1.5",
    "inf",
    "nan",
    "true",
    "false",
    r#""""#,
    r#""EUR""#,
    r#""json""#,
    r#""text""#,
    r#""Json""#,
    "[]",
    r#"[""]"#,
    "[1]",
    "[[]]",
    "{}",
    "{ a = 1 }",
    r#""127.0.0.1:0""#,
    r#""[::1]:1""#,
    r#""localhost:1""#,
    r#""1.2.3.4""#,
    r#""1.2.3.4:65536""#,
    "1979-05-27T07:32:00Z",
    r#""\u0000""#,
    "'''\n'''",
    r#""\uD800""#,
];

/// Multiaddr-like text: protocol names the parser knows, and anything between the slashes.
fn hostile_multiaddr() -> impl Strategy<Value = String> {
    let protocol = prop::sample::select(vec![
        "ip4",
        "ip6",
        "tcp",
        "udp",
        "dns",
        "dns4",
        "dns6",
        "dnsaddr",
        "unix",
        "onion",
        "onion3",
        "garlic32",
        "garlic64",
        "p2p",
        "ipfs",
        "quic",
        "quic-v1",
        "webtransport",
        "certhash",
        "ws",
        "wss",
        "tls",
        "sni",
        "noise",
        "http",
        "https",
        "http-path",
        "memory",
        "ip6zone",
        "p2p-circuit",
        "webrtc",
        "webrtc-direct",
        "p2p-webrtc-star",
        "udt",
        "utp",
        "ipcidr",
        "dccp",
        "sctp",
    ]);
    let segment = prop_oneof![
        protocol.prop_map(str::to_owned),
        "[0-9]{1,6}|[0-9a-fA-F:.%]{1,20}|[a-zA-Z0-9+/=_-]{1,60}|\\PC{0,10}",
    ];
    prop::collection::vec(segment, 1..8).prop_map(|parts| format!("/{}", parts.join("/")))
}

/// A TOML array of strings, escaped as TOML escapes them.
fn toml_list(items: &[String]) -> String {
    toml::Value::Array(items.iter().cloned().map(toml::Value::String).collect()).to_string()
}

/// A shipped or written file with the values of some keys replaced: wrong types, edges of ranges, hostile
/// multiaddrs. Past the TOML parser, into the settings.
fn retyped_file() -> impl Strategy<Value = (Option<Config>, String, String)> {
    // A multiaddr list goes where the site's addresses are (`listen`, `bootstrap`), a value anywhere.
    let value = prop_oneof![
        3 => prop::sample::select(VALUES).prop_map(|v| (false, v.to_owned())),
        2 => hostile_multiaddr().prop_map(|m| (true, toml_list(&[m]))),
        1 => multiaddr().prop_map(|m| (true, toml_list(&[m.clone(), m]))),
    ];
    (
        config_file(),
        prop::collection::vec((any::<proptest::sample::Index>(), value), 1..4),
    )
        .prop_map(|((expected, original), swaps)| {
            let mut lines: Vec<String> = original.lines().map(str::to_owned).collect();
            let keyed = |lines: &[String], addresses: bool| -> Vec<usize> {
                (0..lines.len())
                    .filter(|&i| {
                        lines[i].contains(" = ") && !lines[i].trim_start().starts_with('#')
                    })
                    .filter(|&i| {
                        !addresses
                            || lines[i].starts_with("listen")
                            || lines[i].starts_with("bootstrap")
                    })
                    .collect()
            };
            for (at, (addresses, value)) in swaps {
                let keyed = keyed(&lines, addresses);
                if keyed.is_empty() {
                    continue;
                }
                let i = keyed[at.index(keyed.len())];
                let key = lines[i].split(" = ").next().unwrap_or_default().to_owned();
                lines[i] = format!("{key} = {value}");
            }
            (expected, original, lines.join("\n"))
        })
}

fn check(expected: Option<&Config>, original: &str, input: &str) -> TestCaseResult {
    // toml keeps every value it reads with its spans: about 230 bytes a byte for inline tables nested as deep as
    // it allows (it refuses deeper ones), so what a file costs grows with the file, never with what it declares.
    let parsed = bounded(input.len(), 256, || Config::parse(input))?;
    match parsed {
        Ok(config) => {
            if input == original
                && let Some(expected) = expected
            {
                prop_assert_eq!(&config, expected, "the file says other settings");
            }
            // The node's own checks hold for what it accepted...
            prop_assert!(config.telemetry.sample_one_in >= 1);
            prop_assert!(config.media.preseed_every_secs >= 1 && config.media.gc_every_secs >= 1);
            for addr in config.p2p.listen.iter().chain(&config.p2p.bootstrap) {
                prop_assert!(
                    addr.parse::<libp2p::Multiaddr>().is_ok(),
                    "{addr:?} accepted"
                );
            }
            // ...and what it accepted writes back to the same settings.
            let text = toml::to_string(&config).map_err(|e| TestCaseError::fail(format!("{e}")))?;
            let again =
                Config::parse(&text).map_err(|e| TestCaseError::fail(format!("{e:#}\n{text}")))?;
            prop_assert_eq!(again, config, "the settings read back differently");
        }
        Err(e) => {
            prop_assert!(
                input != original,
                "a shipped or written config is refused: {e:#}"
            );
            let said = format!("{e:#}");
            prop_assert!(!said.is_empty());
        }
    }
    Ok(())
}

#[test]
fn a_damaged_config_file_never_panics_the_node_and_what_it_accepts_writes_back_the_same() {
    let input = prop_oneof![
        4 => hostile_text(config_file(), TOML_WORDS),
        4 => retyped_file(),
        1 => deep_file().prop_map(|(c, text)| (c, String::new(), text)),
    ];
    fuzz("config", CASES, input, |(expected, original, input)| {
        check(expected.as_ref(), &original, &input)
    });
}
