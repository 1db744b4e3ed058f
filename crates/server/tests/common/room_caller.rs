//! SIPp callers of Bob's that dial a room, key an access code (SIP INFO, RFC 4733 or
//! in-band tones) and stay or get hung up on.

use std::path::{Path, PathBuf};

use super::{free_udp_port, scenario, scenario_dir, Pbx, Sipp};

pub enum Dtmf<'a> {
    None,
    Info(&'a str),
    Rfc4733(&'a str),
    Pcap(&'a Path),
}

pub fn dtmf_section(dtmf: &Dtmf<'_>) -> String {
    match dtmf {
        Dtmf::None => String::new(),
        Dtmf::Info(digits) => {
            let snippet = std::fs::read_to_string(scenario_dir().join("info_digit.snippet")).unwrap();
            digits
                .chars()
                .enumerate()
                .map(|(i, d)| {
                    snippet
                        .replace("@CSEQ@", &(10 + i).to_string())
                        .replace("@DIGIT@", &d.to_string())
                })
                .collect()
        }
        Dtmf::Rfc4733(digits) => digits
            .chars()
            .map(|d| {
                let name = match d {
                    '#' => "pound".to_string(),
                    '*' => "star".to_string(),
                    d => d.to_string(),
                };
                format!(
                    "  <nop><action><exec play_pcap_audio=\"/usr/share/sip-tester/dtmf_2833_{name}.pcap\"/></action></nop>\n  <pause milliseconds=\"400\"/>\n"
                )
            })
            .collect(),
        Dtmf::Pcap(pcap) => format!(
            "  <nop><action><exec play_pcap_audio=\"{}\"/></action></nop>\n  <pause milliseconds=\"4000\"/>\n",
            pcap.display()
        ),
    }
}

/// What a SIPp phone of Bob's does in a room: dial `room`, wait `wait_ms` (the prompt),
/// key `dtmf`, stay `hold_ms`, then hang up — or, when `rejected`, expect the room to
/// hang up on it.
pub struct Visit<'a> {
    pub room: &'a str,
    pub dtmf: Dtmf<'a>,
    pub wait_ms: u32,
    pub hold_ms: u32,
    pub rejected: bool,
}

pub fn room_caller(pbx: &Pbx, dir: &Path, name: &str, visit: Visit<'_>) -> Sipp {
    room_callers(pbx, dir, name, visit, 1)
}

/// `calls` SIPp calls of Bob's at once, each making `visit`.
pub fn room_callers(pbx: &Pbx, dir: &Path, name: &str, visit: Visit<'_>, calls: u32) -> Sipp {
    let room = visit.room;
    let file = visit_scenario(dir, name, visit);
    spawn_bob(pbx, name, &file, room, calls)
}

/// The scenario file of `visit`, named after `name`.
pub fn visit_scenario(dir: &Path, name: &str, visit: Visit<'_>) -> PathBuf {
    let Visit {
        dtmf,
        wait_ms,
        hold_ms,
        rejected,
        ..
    } = visit;
    let part = if rejected {
        "caller_rejected_by_room.part"
    } else {
        "caller_in_room.part"
    };
    let file = scenario(
        dir,
        "caller.xml.in",
        part,
        &[
            ("WAIT_MS", &wait_ms.to_string()),
            ("HOLD_MS", &hold_ms.to_string()),
            ("DTMF", &dtmf_section(&dtmf)),
        ],
    );
    let renamed = dir.join(format!("{name}.xml"));
    std::fs::rename(&file, &renamed).unwrap();
    renamed
}

/// SIPp running `file` as Bob, `calls` calls at once to `room`.
pub fn spawn_bob(pbx: &Pbx, name: &str, file: &Path, room: &str, calls: u32) -> Sipp {
    let media_port = free_udp_port();
    let calls = calls.to_string();
    Sipp::spawn(
        name,
        file,
        free_udp_port(),
        &[
            "-m",
            &calls,
            "-l",
            &calls,
            "-r",
            &calls,
            "-s",
            room,
            "-au",
            "bob",
            "-ap",
            "bob-secret",
            "-mp",
            &media_port.to_string(),
            &pbx.sip.to_string(),
        ],
    )
}
