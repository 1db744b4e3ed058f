//! RTP and RTCP wire formats (RFC 3550), rtcp-mux demultiplexing (RFC 5761) and the receiver
//! statistics behind RTCP reports (RFC 3550 Appendix A).
//!
//! These parsers read datagrams from anyone on the internet, so every length is checked before
//! it is used and every error is a value, never a panic. They borrow from the datagram rather
//! than copy, and the writers append to a caller's buffer, so nothing here allocates per
//! packet.

use std::time::{Duration, Instant};

/// What was wrong with an RTP or RTCP datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtpError {
    /// Shorter than a fixed header (12 bytes RTP, 4 bytes RTCP, or a block it announces).
    #[error("packet too short: {0} bytes")]
    TooShort(usize),
    /// The version field is not 2.
    #[error("unsupported RTP version {0}")]
    BadVersion(u8),
    /// The CSRC count reaches past the end of the packet.
    #[error("CSRC list ({0} entries) runs past the end of the packet")]
    CsrcOverflow(u8),
    /// The header extension's length reaches past the end of the packet.
    #[error("header extension runs past the end of the packet")]
    ExtensionOverflow,
    /// The padding count is zero or larger than the space after the header.
    #[error("invalid padding count {0}")]
    BadPadding(u8),
    /// An RTCP packet's length field runs past the end of the compound packet, or its body is
    /// too short for its type.
    #[error("RTCP length field invalid for packet type {0}")]
    BadRtcpLength(u8),
}

/// The fields of an RTP fixed header that a receiver acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RtpHeader {
    /// Payload type (7 bits).
    pub payload_type: u8,
    /// Marker bit: start of a talkspurt for audio, end of an event for RFC 4733.
    pub marker: bool,
    /// Sequence number, wrapping.
    pub sequence: u16,
    /// Sampling instant of the first octet, in the payload's clock, wrapping.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
}

/// Size of the fixed RTP header.
pub const RTP_HEADER_LEN: usize = 12;

fn be16(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(d.get(at..at + 2)?.try_into().ok()?))
}

fn be32(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

/// Parses an RTP packet: the header, and the payload after the CSRC list, header extension
/// and before any padding.
pub fn parse_rtp(data: &[u8]) -> Result<(RtpHeader, &[u8]), RtpError> {
    if data.len() < RTP_HEADER_LEN {
        return Err(RtpError::TooShort(data.len()));
    }
    let b0 = data[0];
    let version = b0 >> 6;
    if version != 2 {
        return Err(RtpError::BadVersion(version));
    }
    let csrc_count = b0 & 0x0f;
    let mut start = RTP_HEADER_LEN + 4 * usize::from(csrc_count);
    if start > data.len() {
        return Err(RtpError::CsrcOverflow(csrc_count));
    }
    if b0 & 0x10 != 0 {
        let words = be16(data, start + 2).ok_or(RtpError::ExtensionOverflow)?;
        start += 4 + 4 * usize::from(words);
        if start > data.len() {
            return Err(RtpError::ExtensionOverflow);
        }
    }
    let mut end = data.len();
    if b0 & 0x20 != 0 {
        let pad = data[data.len() - 1];
        if pad == 0 || usize::from(pad) > end - start {
            return Err(RtpError::BadPadding(pad));
        }
        end -= usize::from(pad);
    }
    let header = RtpHeader {
        payload_type: data[1] & 0x7f,
        marker: data[1] & 0x80 != 0,
        sequence: u16::from_be_bytes([data[2], data[3]]),
        timestamp: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
        ssrc: u32::from_be_bytes([data[8], data[9], data[10], data[11]]),
    };
    Ok((header, &data[start..end]))
}

/// Appends an RTP packet (no CSRCs, extension or padding) to `out`.
pub fn write_rtp(h: &RtpHeader, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(RTP_HEADER_LEN + payload.len());
    out.push(0x80);
    out.push((u8::from(h.marker) << 7) | (h.payload_type & 0x7f));
    out.extend_from_slice(&h.sequence.to_be_bytes());
    out.extend_from_slice(&h.timestamp.to_be_bytes());
    out.extend_from_slice(&h.ssrc.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Whether a datagram on a multiplexed port is RTCP rather than RTP (RFC 5761 §4): its second
/// byte, read as an RTCP packet type, lies in 192..=223. RTP payload types 64–95, which
/// would collide, are not used with rtcp-mux.
#[must_use]
pub fn is_rtcp(data: &[u8]) -> bool {
    data.len() >= 2 && (192..=223).contains(&data[1])
}

/// RTCP packet types this module reads or writes.
pub mod rtcp_type {
    /// Sender report.
    pub const SR: u8 = 200;
    /// Receiver report.
    pub const RR: u8 = 201;
    /// Source description.
    pub const SDES: u8 = 202;
    /// Goodbye.
    pub const BYE: u8 = 203;
}

/// The sender-info section of an SR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderInfo {
    /// Wall-clock time of the report, NTP format (32.32 fixed point seconds since 1900).
    pub ntp: u64,
    /// The same instant in the stream's RTP clock.
    pub rtp_timestamp: u32,
    /// Packets sent since the stream started.
    pub packet_count: u32,
    /// Payload octets sent since the stream started.
    pub octet_count: u32,
}

/// One reception report block: what the reporter received from `ssrc`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportBlock {
    /// The source reported on.
    pub ssrc: u32,
    /// Fraction of packets lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Packets lost since the start (24-bit signed: duplicates can make it negative).
    pub cumulative_lost: i32,
    /// Highest sequence number received, extended with the wrap count in the top 16 bits.
    pub highest_seq: u32,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP time in the last SR received from `ssrc` (0: none).
    pub last_sr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

const REPORT_BLOCK_LEN: usize = 24;

impl ReportBlock {
    fn parse(b: &[u8]) -> Option<ReportBlock> {
        let lost = be32(b, 4)?;
        // Sign-extend the 24-bit cumulative count.
        let cumulative_lost = ((lost << 8) as i32) >> 8;
        Some(ReportBlock {
            ssrc: be32(b, 0)?,
            fraction_lost: (lost >> 24) as u8,
            cumulative_lost,
            highest_seq: be32(b, 8)?,
            jitter: be32(b, 12)?,
            last_sr: be32(b, 16)?,
            delay_since_last_sr: be32(b, 20)?,
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        let lost = self.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff) as u32 & 0xff_ffff;
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(&((u32::from(self.fraction_lost) << 24) | lost).to_be_bytes());
        out.extend_from_slice(&self.highest_seq.to_be_bytes());
        out.extend_from_slice(&self.jitter.to_be_bytes());
        out.extend_from_slice(&self.last_sr.to_be_bytes());
        out.extend_from_slice(&self.delay_since_last_sr.to_be_bytes());
    }
}

/// The report blocks of an SR or RR, read lazily from the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportBlocks<'a>(&'a [u8]);

impl<'a> ReportBlocks<'a> {
    /// Iterates over the blocks.
    pub fn iter(&self) -> impl Iterator<Item = ReportBlock> + 'a {
        self.0
            .chunks_exact(REPORT_BLOCK_LEN)
            .filter_map(ReportBlock::parse)
    }

    /// Number of blocks.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len() / REPORT_BLOCK_LEN
    }

    /// Whether there are no blocks.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One packet of an RTCP compound packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RtcpPacket<'a> {
    /// Sender report.
    SenderReport {
        /// The sender.
        ssrc: u32,
        /// Its sending statistics and clock.
        info: SenderInfo,
        /// What it received.
        blocks: ReportBlocks<'a>,
    },
    /// Receiver report.
    ReceiverReport {
        /// The reporter.
        ssrc: u32,
        /// What it received.
        blocks: ReportBlocks<'a>,
    },
    /// Goodbye: these sources are leaving.
    Bye {
        /// The leaving sources (big-endian u32s; see [`RtcpPacket::bye_sources`]).
        sources: &'a [u8],
    },
    /// Any other type (SDES, APP, feedback, XR): skipped by this crate.
    Other {
        /// The RTCP packet type.
        packet_type: u8,
    },
}

impl RtcpPacket<'_> {
    /// The SSRCs a BYE names (empty for other packets).
    pub fn bye_sources(&self) -> impl Iterator<Item = u32> + '_ {
        let s: &[u8] = match self {
            RtcpPacket::Bye { sources } => sources,
            _ => &[],
        };
        s.chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// Iterator over the packets of an RTCP compound packet; yields one error and stops at the
/// first malformed packet.
#[derive(Clone, Debug)]
pub struct RtcpPackets<'a> {
    rest: &'a [u8],
}

/// Reads an RTCP compound packet.
#[must_use]
pub fn parse_rtcp(data: &[u8]) -> RtcpPackets<'_> {
    RtcpPackets { rest: data }
}

impl<'a> Iterator for RtcpPackets<'a> {
    type Item = Result<RtcpPacket<'a>, RtpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let r = self.next_packet();
        if r.is_err() {
            self.rest = &[];
        }
        Some(r)
    }
}

impl<'a> RtcpPackets<'a> {
    fn next_packet(&mut self) -> Result<RtcpPacket<'a>, RtpError> {
        let data = self.rest;
        if data.len() < 4 {
            return Err(RtpError::TooShort(data.len()));
        }
        let version = data[0] >> 6;
        if version != 2 {
            return Err(RtpError::BadVersion(version));
        }
        let count = usize::from(data[0] & 0x1f);
        let pt = data[1];
        let len = 4 * (usize::from(u16::from_be_bytes([data[2], data[3]])) + 1);
        if len > data.len() {
            return Err(RtpError::BadRtcpLength(pt));
        }
        let (packet, rest) = data.split_at(len);
        self.rest = rest;
        let mut body = &packet[4..];
        if data[0] & 0x20 != 0 {
            let pad = usize::from(packet[len - 1]);
            if pad == 0 || pad > body.len() {
                return Err(RtpError::BadPadding(packet[len - 1]));
            }
            body = &body[..body.len() - pad];
        }
        let bad = RtpError::BadRtcpLength(pt);
        Ok(match pt {
            rtcp_type::SR => {
                let blocks = body.get(24..24 + count * REPORT_BLOCK_LEN).ok_or(bad)?;
                let ntp_hi = be32(body, 4).ok_or(bad)?;
                let ntp_lo = be32(body, 8).ok_or(bad)?;
                RtcpPacket::SenderReport {
                    ssrc: be32(body, 0).ok_or(bad)?,
                    info: SenderInfo {
                        ntp: (u64::from(ntp_hi) << 32) | u64::from(ntp_lo),
                        rtp_timestamp: be32(body, 12).ok_or(bad)?,
                        packet_count: be32(body, 16).ok_or(bad)?,
                        octet_count: be32(body, 20).ok_or(bad)?,
                    },
                    blocks: ReportBlocks(blocks),
                }
            }
            rtcp_type::RR => {
                let blocks = body.get(4..4 + count * REPORT_BLOCK_LEN).ok_or(bad)?;
                RtcpPacket::ReceiverReport {
                    ssrc: be32(body, 0).ok_or(bad)?,
                    blocks: ReportBlocks(blocks),
                }
            }
            rtcp_type::BYE => RtcpPacket::Bye {
                sources: body.get(..count * 4).ok_or(bad)?,
            },
            other => RtcpPacket::Other { packet_type: other },
        })
    }
}

/// Writes an RTCP header for a packet whose body is `body_len` bytes (a multiple of 4).
fn rtcp_header(count: u8, pt: u8, body_len: usize, out: &mut Vec<u8>) {
    out.push(0x80 | (count & 0x1f));
    out.push(pt);
    out.extend_from_slice(&((body_len / 4) as u16).to_be_bytes());
}

/// Appends a sender report with up to 31 report blocks (extra blocks are ignored).
pub fn write_sr(ssrc: u32, info: &SenderInfo, blocks: &[ReportBlock], out: &mut Vec<u8>) {
    let blocks = &blocks[..blocks.len().min(31)];
    rtcp_header(
        blocks.len() as u8,
        rtcp_type::SR,
        24 + REPORT_BLOCK_LEN * blocks.len(),
        out,
    );
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(&info.ntp.to_be_bytes());
    out.extend_from_slice(&info.rtp_timestamp.to_be_bytes());
    out.extend_from_slice(&info.packet_count.to_be_bytes());
    out.extend_from_slice(&info.octet_count.to_be_bytes());
    for b in blocks {
        b.write(out);
    }
}

/// Appends a receiver report with up to 31 report blocks (extra blocks are ignored).
pub fn write_rr(ssrc: u32, blocks: &[ReportBlock], out: &mut Vec<u8>) {
    let blocks = &blocks[..blocks.len().min(31)];
    rtcp_header(
        blocks.len() as u8,
        rtcp_type::RR,
        4 + REPORT_BLOCK_LEN * blocks.len(),
        out,
    );
    out.extend_from_slice(&ssrc.to_be_bytes());
    for b in blocks {
        b.write(out);
    }
}

/// Appends an SDES packet with one chunk carrying a CNAME, which RFC 3550 §6.1 requires in
/// every compound packet. The CNAME is cut to 255 bytes.
pub fn write_sdes_cname(ssrc: u32, cname: &str, out: &mut Vec<u8>) {
    let name = &cname.as_bytes()[..cname.len().min(255)];
    // ssrc + type + length + name + at least one null, padded to 32 bits.
    let chunk = (4 + 2 + name.len() + 1).div_ceil(4) * 4;
    rtcp_header(1, rtcp_type::SDES, chunk, out);
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.push(1); // CNAME
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    let nulls = chunk - 6 - name.len();
    out.extend(std::iter::repeat_n(0, nulls));
}

/// Appends a BYE for `ssrc`.
pub fn write_bye(ssrc: u32, out: &mut Vec<u8>) {
    rtcp_header(1, rtcp_type::BYE, 4, out);
    out.extend_from_slice(&ssrc.to_be_bytes());
}

/// NTP time (seconds since 1900, 32.32 fixed point) for a Unix time.
#[must_use]
pub fn ntp_from_unix(unix: Duration) -> u64 {
    const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
    let secs = unix.as_secs().wrapping_add(NTP_UNIX_OFFSET);
    let frac = (u64::from(unix.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The middle 32 bits of an NTP time, as echoed in LSR (RFC 3550 §6.4.1).
#[must_use]
pub fn ntp_middle(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// Receiver-side statistics for one source, per RFC 3550 Appendix A.1, A.3 and A.8: the
/// extended highest sequence number, expected and lost counts, and interarrival jitter.
#[derive(Clone, Debug)]
pub struct ReceiverStats {
    clock_rate: u32,
    started: bool,
    base_seq: u32,
    max_seq: u16,
    cycles: u32,
    /// Sequence number that would confirm a restart after a large jump.
    bad_seq: Option<u16>,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Arrival minus timestamp of the previous packet, in timestamp units.
    last_transit: Option<i64>,
    /// Jitter in 1/16 timestamp units (A.8's fixed-point estimator).
    jitter_q4: u64,
    epoch: Option<Instant>,
}

/// A sequence jump larger than this is treated as a restart of the sender (A.1).
const MAX_DROPOUT: u16 = 3000;
/// A sequence this far behind the highest is a late duplicate, not a restart (A.1).
const MAX_MISORDER: u16 = 100;

impl ReceiverStats {
    /// Statistics for a source stamping at `clock_rate` Hz.
    #[must_use]
    pub fn new(clock_rate: u32) -> Self {
        ReceiverStats {
            clock_rate: clock_rate.max(1),
            started: false,
            base_seq: 0,
            max_seq: 0,
            cycles: 0,
            bad_seq: None,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            last_transit: None,
            jitter_q4: 0,
            epoch: None,
        }
    }

    /// Records a packet that arrived at `now`. Returns false when it was rejected as a wild
    /// sequence jump (the sender may have restarted: a second in-order packet confirms it).
    pub fn update(&mut self, now: Instant, h: &RtpHeader) -> bool {
        let seq = h.sequence;
        if !self.started {
            self.restart(seq);
            self.started = true;
        } else {
            let delta = seq.wrapping_sub(self.max_seq);
            if delta < MAX_DROPOUT {
                if seq < self.max_seq {
                    self.cycles = self.cycles.wrapping_add(1 << 16);
                }
                self.max_seq = seq;
            } else if delta <= u16::MAX - MAX_MISORDER {
                // A big jump: accept only if the next packet follows it.
                if self.bad_seq == Some(seq) {
                    self.restart(seq);
                } else {
                    self.bad_seq = Some(seq.wrapping_add(1));
                    return false;
                }
            }
            // Otherwise a duplicate or reordered packet: counted, sequence unchanged.
        }
        self.received += 1;

        // Interarrival jitter: the change in transit time, smoothed with gain 1/16.
        let epoch = *self.epoch.get_or_insert(now);
        let arrival = now.saturating_duration_since(epoch).as_nanos() as u64 as u128
            * u128::from(self.clock_rate)
            / 1_000_000_000;
        let transit = (arrival as i64).wrapping_sub(i64::from(h.timestamp));
        if let Some(last) = self.last_transit {
            // Timestamps wrap at 2^32: reduce the difference modulo 2^32 into i32 range.
            let d = i64::from((transit.wrapping_sub(last) as u32) as i32).unsigned_abs();
            let j = self.jitter_q4;
            self.jitter_q4 = j + d.min(1 << 32) - ((j + 8) >> 4);
        }
        self.last_transit = Some(transit);
        true
    }

    fn restart(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.cycles = 0;
        self.bad_seq = None;
        self.received = 0;
        self.expected_prior = 0;
        self.received_prior = 0;
    }

    /// Extended highest sequence number received.
    #[must_use]
    pub fn extended_max(&self) -> u32 {
        self.cycles | u32::from(self.max_seq)
    }

    /// Packets expected so far.
    fn expected(&self) -> u64 {
        if !self.started {
            return 0;
        }
        (u64::from(self.extended_max()) + 1).saturating_sub(u64::from(self.base_seq))
    }

    /// Packets lost since the start (negative with duplicates).
    #[must_use]
    pub fn cumulative_lost(&self) -> i64 {
        self.expected() as i64 - self.received as i64
    }

    /// Packets received (including duplicates).
    #[must_use]
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Interarrival jitter in timestamp units.
    #[must_use]
    pub fn jitter(&self) -> u32 {
        (self.jitter_q4 >> 4).min(u64::from(u32::MAX)) as u32
    }

    /// Interarrival jitter in milliseconds.
    #[must_use]
    pub fn jitter_ms(&self) -> f32 {
        self.jitter() as f32 * 1000.0 / self.clock_rate as f32
    }

    /// Builds a report block about `ssrc` and starts a new reporting interval (the fraction
    /// lost covers the packets since the previous call).
    pub fn report(&mut self, ssrc: u32, last_sr: u32, delay_since_last_sr: u32) -> ReportBlock {
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        let fraction_lost = (lost_interval << 8)
            .checked_div(expected_interval)
            .map_or(0, |f| f.min(255) as u8);
        ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: self.cumulative_lost().clamp(-0x80_0000, 0x7f_ffff) as i32,
            highest_seq: self.extended_max(),
            jitter: self.jitter(),
            last_sr,
            delay_since_last_sr,
        }
    }

    /// Fraction lost over the interval not yet reported, 0.0–1.0 (without ending it).
    #[must_use]
    pub fn fraction_lost(&self) -> f32 {
        let expected = self.expected().saturating_sub(self.expected_prior);
        let received = self.received.saturating_sub(self.received_prior);
        if expected == 0 {
            0.0
        } else {
            expected.saturating_sub(received) as f32 / expected as f32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> RtpHeader {
        RtpHeader {
            payload_type: 8,
            marker: true,
            sequence: 0xfffe,
            timestamp: 0xdead_beef,
            ssrc: 0x1234_5678,
        }
    }

    #[test]
    fn rtp_roundtrip() {
        let mut buf = Vec::new();
        write_rtp(&header(), b"payload", &mut buf);
        assert_eq!(buf.len(), 12 + 7);
        assert_eq!(buf[0], 0x80);
        assert_eq!(buf[1], 0x88);
        let (h, p) = parse_rtp(&buf).unwrap();
        assert_eq!(h, header());
        assert_eq!(p, b"payload");
        assert!(!is_rtcp(&buf));
    }

    #[test]
    fn rtp_with_csrc_extension_and_padding() {
        let mut buf = vec![0x80 | 0x20 | 0x10 | 2, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        buf.extend_from_slice(&[0xaa; 8]); // two CSRCs
        buf.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0x55, 0, 0]); // one-byte ext, 1 word
        buf.extend_from_slice(b"abc");
        buf.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        let (h, p) = parse_rtp(&buf).unwrap();
        assert_eq!((h.sequence, h.timestamp, h.ssrc), (1, 2, 3));
        assert_eq!(p, b"abc");
    }

    #[test]
    fn malformed_rtp() {
        let good = {
            let mut b = Vec::new();
            write_rtp(&header(), &[1, 2, 3, 4], &mut b);
            b
        };
        for n in 0..12 {
            assert_eq!(parse_rtp(&good[..n]), Err(RtpError::TooShort(n)));
        }
        let mut v1 = good.clone();
        v1[0] = 0x40;
        assert_eq!(parse_rtp(&v1), Err(RtpError::BadVersion(1)));
        let mut cc = good.clone();
        cc[0] = 0x8f; // 15 CSRCs = 60 bytes, only 4 there
        assert_eq!(parse_rtp(&cc), Err(RtpError::CsrcOverflow(15)));
        let mut ext = good.clone();
        ext[0] = 0x90;
        assert_eq!(parse_rtp(&ext), Err(RtpError::ExtensionOverflow)); // ext header needs 4
        ext.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(parse_rtp(&ext), Err(RtpError::ExtensionOverflow)); // 65535 words
        let mut pad = good.clone();
        pad[0] = 0xa0;
        *pad.last_mut().unwrap() = 5; // 5 > 4 payload bytes
        assert_eq!(parse_rtp(&pad), Err(RtpError::BadPadding(5)));
        *pad.last_mut().unwrap() = 0;
        assert_eq!(parse_rtp(&pad), Err(RtpError::BadPadding(0)));
        *pad.last_mut().unwrap() = 4; // exactly the payload: empty, fine
        assert_eq!(parse_rtp(&pad).unwrap().1, b"");
        // Padding bit on a bare header: the pad byte is inside the header.
        let mut bare = good[..12].to_vec();
        bare[0] = 0xa0;
        assert!(matches!(parse_rtp(&bare), Err(RtpError::BadPadding(_))));
    }

    #[test]
    fn rtp_parser_never_panics_on_noise() {
        let mut rng = 0x9e37_79b9_u32;
        let mut buf = [0u8; 64];
        for round in 0..20_000 {
            for b in &mut buf {
                rng ^= rng << 13;
                rng ^= rng >> 17;
                rng ^= rng << 5;
                *b = rng as u8;
            }
            buf[0] = (buf[0] & 0x3f) | 0x80; // mostly version 2, to get past the first check
            let n = round % 64;
            let _ = parse_rtp(&buf[..n]);
            let _ = is_rtcp(&buf[..n]);
            for p in parse_rtcp(&buf[..n]).flatten() {
                let _ = p.bye_sources().count();
                if let RtcpPacket::SenderReport { blocks, .. }
                | RtcpPacket::ReceiverReport { blocks, .. } = p
                {
                    let _ = blocks.iter().count();
                }
            }
        }
    }

    #[test]
    fn rtcp_demux() {
        assert!(is_rtcp(&[0x80, 200]));
        assert!(is_rtcp(&[0x80, 206]));
        assert!(is_rtcp(&[0x80, 207])); // XR
        assert!(!is_rtcp(&[0x80, 0]));
        assert!(!is_rtcp(&[0x80, 0x80 | 8])); // PCMA with marker
        assert!(!is_rtcp(&[0x80, 0x80 | 101])); // telephone-event with marker
        assert!(!is_rtcp(&[0x80]));
    }

    #[test]
    fn rtcp_compound_roundtrip() {
        let block = ReportBlock {
            ssrc: 7,
            fraction_lost: 25,
            cumulative_lost: -3,
            highest_seq: 0x0001_0005,
            jitter: 80,
            last_sr: 0x1234_5678,
            delay_since_last_sr: 65536,
        };
        let info = SenderInfo {
            ntp: 0x0102_0304_0506_0708,
            rtp_timestamp: 160,
            packet_count: 10,
            octet_count: 1600,
        };
        let mut buf = Vec::new();
        write_sr(1, &info, &[block], &mut buf);
        write_sdes_cname(1, "confero@example", &mut buf);
        write_rr(2, &[block, block], &mut buf);
        write_bye(1, &mut buf);
        assert!(is_rtcp(&buf));
        assert_eq!(buf.len() % 4, 0);
        let packets: Vec<_> = parse_rtcp(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(packets.len(), 4);
        match packets[0] {
            RtcpPacket::SenderReport {
                ssrc,
                info: i,
                blocks,
            } => {
                assert_eq!((ssrc, i), (1, info));
                assert_eq!(blocks.iter().collect::<Vec<_>>(), vec![block]);
            }
            p => panic!("{p:?}"),
        }
        assert_eq!(packets[1], RtcpPacket::Other { packet_type: 202 });
        match packets[2] {
            RtcpPacket::ReceiverReport { ssrc, blocks } => {
                assert_eq!(ssrc, 2);
                assert_eq!(blocks.len(), 2);
            }
            p => panic!("{p:?}"),
        }
        assert_eq!(packets[3].bye_sources().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn sdes_padding_lengths() {
        for len in 0..12 {
            let mut buf = Vec::new();
            write_sdes_cname(9, &"x".repeat(len), &mut buf);
            assert_eq!(buf.len() % 4, 0);
            assert_eq!(parse_rtcp(&buf).count(), 1);
            assert!(parse_rtcp(&buf).all(|p| p.is_ok()));
        }
    }

    #[test]
    fn malformed_rtcp() {
        let mut rr = Vec::new();
        write_rr(5, &[ReportBlock::default()], &mut rr);
        // Truncated anywhere: an error, then the iterator ends.
        for n in 1..rr.len() {
            let mut it = parse_rtcp(&rr[..n]);
            assert!(it.next().unwrap().is_err(), "len {n}");
            assert!(it.next().is_none());
        }
        // Count claims more blocks than the length holds.
        let mut lie = rr.clone();
        lie[0] = 0x80 | 3;
        assert_eq!(
            parse_rtcp(&lie).next(),
            Some(Err(RtpError::BadRtcpLength(201)))
        );
        // Wrong version.
        let mut v = rr.clone();
        v[0] = 0x01;
        assert_eq!(parse_rtcp(&v).next(), Some(Err(RtpError::BadVersion(0))));
        // Padding larger than the body.
        let mut pad = rr.clone();
        pad[0] |= 0x20;
        *pad.last_mut().unwrap() = 200;
        assert_eq!(
            parse_rtcp(&pad).next(),
            Some(Err(RtpError::BadPadding(200)))
        );
        // A good packet followed by garbage: the first is still read.
        let mut tail = rr.clone();
        tail.extend_from_slice(&[0x80, 201, 0xff, 0xff]);
        let got: Vec<_> = parse_rtcp(&tail).collect();
        assert!(got[0].is_ok() && got[1].is_err() && got.len() == 2);
    }

    #[test]
    fn ntp_conversion() {
        let ntp = ntp_from_unix(Duration::new(0, 500_000_000));
        assert_eq!(ntp >> 32, 2_208_988_800);
        assert_eq!(ntp as u32, 1 << 31);
        assert_eq!(ntp_middle(0x0000_1234_5678_0000), 0x1234_5678);
    }

    #[test]
    fn receiver_stats_loss_wrap_and_jitter() {
        let t0 = Instant::now();
        let mut s = ReceiverStats::new(8000);
        let mut h = RtpHeader {
            sequence: 65530,
            timestamp: u32::MAX - 800,
            ..RtpHeader::default()
        };
        for i in 0..20u32 {
            // Lose sequence numbers ending in 3; arrive exactly on time.
            if h.sequence % 10 != 3 {
                assert!(s.update(t0 + Duration::from_millis(20 * u64::from(i)), &h));
            }
            h.sequence = h.sequence.wrapping_add(1);
            h.timestamp = h.timestamp.wrapping_add(160);
        }
        // 65533, 3 and 13 are lost; 13 would have been the last.
        assert_eq!(s.extended_max(), 0x0001_0000 | 12);
        assert_eq!(s.cumulative_lost(), 2);
        assert_eq!(s.jitter(), 0);
        let block = s.report(42, 0, 0);
        assert_eq!(block.fraction_lost, (2 * 256 / 19) as u8);
        assert_eq!(s.report(42, 0, 0).fraction_lost, 0);

        // A 1000-packet jump is a restart only once confirmed.
        h.sequence = h.sequence.wrapping_add(5000);
        assert!(!s.update(t0, &h));
        h.sequence = h.sequence.wrapping_add(1);
        assert!(s.update(t0, &h));
        assert_eq!(s.cumulative_lost(), 0);
    }

    #[test]
    fn receiver_stats_jitter_converges() {
        let t0 = Instant::now();
        let mut s = ReceiverStats::new(8000);
        let mut h = RtpHeader::default();
        for i in 0..2000u64 {
            // Alternate 0 and 10 ms of extra delay: |D| = 80 ticks every packet.
            let extra = if i % 2 == 0 { 0 } else { 10 };
            s.update(t0 + Duration::from_millis(20 * i + extra), &h);
            h.sequence = h.sequence.wrapping_add(1);
            h.timestamp = h.timestamp.wrapping_add(160);
        }
        assert!((75..=80).contains(&s.jitter()), "{}", s.jitter());
        assert!((s.jitter_ms() - 10.0).abs() < 0.7);
    }
}
