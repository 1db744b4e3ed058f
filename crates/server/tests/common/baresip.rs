//! baresip phones that send a sine tone and record what they hear, and the tone analysis
//! (Goertzel) that checks what they heard.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_tcp_port, free_udp_port, Pbx};

/// A baresip phone (killed on drop) driven through its `ctrl_tcp` module: it sends a sine
/// tone and records what it hears (`heard`).
pub struct Baresip {
    child: Child,
    dir: tempfile::TempDir,
    ctrl: u16,
}

impl Baresip {
    pub fn start(user: &str, password: &str, pbx: &Pbx, tone_hz: u32) -> Baresip {
        Self::start_with_codec(user, password, pbx, tone_hz, "PCMU")
    }

    /// `codec`: "PCMU" or "G722" (the only codec the phone offers). The phone does not
    /// register; it authenticates its calls.
    pub fn start_with_codec(
        user: &str,
        password: &str,
        pbx: &Pbx,
        tone_hz: u32,
        codec: &str,
    ) -> Baresip {
        Self::with_account(
            &format!(
                "<sip:{user}@127.0.0.1:{}>;auth_pass={password};regint=0;audio_codecs={codec}",
                pbx.sip.port()
            ),
            free_udp_port(),
            tone_hz,
        )
    }

    /// A phone with one account (a line of baresip's `accounts` file: registration,
    /// `;answermode=auto` and codecs are the account's parameters) that listens for SIP on
    /// 127.0.0.1:`sip_port` and sends from it.
    pub fn with_account(account: &str, sip_port: u16, tone_hz: u32) -> Baresip {
        let dir = tempfile::tempdir().unwrap();
        let ctrl = free_tcp_port();
        std::fs::create_dir_all(dir.path().join("rec")).unwrap();
        let config = format!(
            "poll_method epoll\nsip_listen 127.0.0.1:{sip_port}\nrtp_ports 30000-32000\naudio_player alsa,null\naudio_alert alsa,null\naudio_source ausine,{tone_hz}\nausrc_srate 48000\nausrc_channels 2\nmodule_path /usr/lib/baresip/modules\nmodule g711.so\nmodule g722.so\nmodule ausine.so\nmodule alsa.so\nmodule sndfile.so\nmodule_app account.so\nmodule_app menu.so\nmodule_app ctrl_tcp.so\nctrl_tcp_listen 127.0.0.1:{ctrl}\nsnd_path {}\n",
            dir.path().join("rec").display()
        );
        std::fs::write(dir.path().join("config"), config).unwrap();
        std::fs::write(dir.path().join("accounts"), format!("{account}\n")).unwrap();
        let log = std::fs::File::create(dir.path().join("baresip.log")).unwrap();
        let child = Command::new("baresip")
            .arg("-f")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start baresip");
        let b = Baresip { child, dir, ctrl };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", ctrl)).is_err() {
            assert!(
                Instant::now() < deadline,
                "baresip did not start: {}",
                b.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("baresip.log")).unwrap_or_default()
    }

    pub fn command(&self, command: &str, params: &str) {
        let body =
            serde_json::json!({"command": command, "params": params, "token": "t"}).to_string();
        let mut s = TcpStream::connect(("127.0.0.1", self.ctrl)).unwrap();
        s.write_all(format!("{}:{},", body.len(), body).as_bytes())
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
    }

    pub fn dial(&self, pbx: &Pbx, room: &str) {
        self.command("dial", &format!("sip:{room}@127.0.0.1:{}", pbx.sip.port()));
    }

    /// Keys `digits` in the current call as RFC 4733 events, one key press (start and
    /// end) per digit.
    pub fn send_digits(&self, digits: &str) {
        for d in digits.chars() {
            self.command("sndcode", &d.to_string());
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn hangup(&self) {
        self.command("hangup", "");
    }

    /// What the phone heard (decoded), as 16-bit samples and their rate.
    pub fn heard(&self) -> (u32, Vec<i16>) {
        let dir = self.dir.path().join("rec");
        let file: PathBuf = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .unwrap_or_else(|| panic!("no recording in {}: {}", dir.display(), self.log()));
        read_wav(&std::fs::read(file).unwrap())
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn read_wav(bytes: &[u8]) -> (u32, Vec<i16>) {
    let rate = u32::from_le_bytes(bytes[24..28].try_into().unwrap());
    let channels = u16::from_le_bytes(bytes[22..24].try_into().unwrap()) as usize;
    let mut pos = 12;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
        if id == b"data" {
            let end = (pos + 8 + len).min(bytes.len());
            let samples: Vec<i16> = bytes[pos + 8..end]
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .step_by(channels.max(1))
                .collect();
            return (rate, samples);
        }
        pos += 8 + len + (len & 1);
    }
    panic!("no data chunk in WAV");
}

/// Share of the signal's energy at `hz` (Goertzel), 0..1.
pub fn tone_share(samples: &[i16], rate: u32, hz: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let n = samples.len() as f64;
    let k = (n * hz / f64::from(rate)).round();
    let w = 2.0 * std::f64::consts::PI * k / n;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut energy = 0.0;
    for &x in samples {
        let x = f64::from(x);
        energy += x * x;
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    if energy == 0.0 {
        0.0
    } else {
        (2.0 * power / n / energy).min(1.0)
    }
}

/// [`tone_share`] of each 100 ms block of `samples`, sorted. One Goertzel over seconds
/// of audio measures phase continuity as much as the tone: a single frame the network
/// or a loaded machine made late (concealed, or skipped to keep time) shifts the phase
/// and halves the share of a tone heard all along. Blocks measure what a listener hears.
pub fn block_shares(samples: &[i16], rate: u32, hz: f64) -> Vec<f64> {
    let block = (rate / 10) as usize;
    let mut shares: Vec<f64> = samples
        .chunks_exact(block)
        .map(|b| tone_share(b, rate, hz))
        .collect();
    shares.sort_by(f64::total_cmp);
    shares
}

/// The `q` quantile (0..=1) of sorted values; 0 for none.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
}

pub fn window(samples: &[i16], rate: u32, from_s: f64, to_s: f64) -> &[i16] {
    let a = ((from_s * f64::from(rate)) as usize).min(samples.len());
    let b = ((to_s * f64::from(rate)) as usize).min(samples.len());
    &samples[a..b]
}

/// Each phone heard the other's tone and not its own, over the last seconds of the call
/// (the call should last at least 3 s after both are in).
pub fn assert_each_hears_the_other(phones: [(&str, &Baresip, f64, f64); 2]) {
    for (who, phone, hear, own_hz) in phones {
        let (rate, samples) = phone.heard();
        let secs = samples.len() as f64 / f64::from(rate);
        // Clear of the hang-up: the other phone may have left a moment before, and the
        // room's leave tone would then be in the last half second.
        let last = window(&samples, rate, secs - 2.5, secs - 0.8);
        // The tone in most blocks, their own in none (the 90th percentile of 17 blocks is
        // the second worst).
        let heard = quantile(&block_shares(last, rate, hear), 0.5);
        let own = quantile(&block_shares(last, rate, own_hz), 0.9);
        assert!(
            heard > 0.5,
            "{who} ({rate} Hz) should hear {hear} Hz: median share {heard:.3}, own {own:.3}, rms {:.0}",
            rms(last)
        );
        assert!(
            own < 0.05,
            "{who} must not hear their own {own_hz} Hz: {own:.3}"
        );
    }
}
