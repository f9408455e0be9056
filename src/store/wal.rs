//! Checking the write-ahead log before SQLite opens it.
//!
//! SQLite reads a WAL file up to its first frame whose checksum fails and silently ignores the
//! rest: after damage in the middle of the log, every transaction committed after that point
//! (all of them, when nothing was checkpointed yet) would vanish without a word, and the next
//! checkpoint would make that final. So before opening, the store reads the log itself (the
//! format is SQLite's documented WAL format) and refuses to start when a committed transaction
//! lies beyond a frame that fails its checksum. A log whose *last* transaction is cut short
//! (a power cut in the middle of a write) is normal and is left to SQLite, which drops that
//! unfinished transaction as it should.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

/// Size of the WAL header.
const HEADER: usize = 32;
/// Size of a frame header.
const FRAME_HEADER: usize = 24;
/// Largest page size SQLite allows; bounds the buffer.
const MAX_PAGE: usize = 65_536;

/// What a damaged log looks like.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Damage {
    /// Index (from 0) of the first frame whose checksum fails.
    pub(super) first_bad_frame: u64,
    /// Committed transactions after it that SQLite would drop.
    pub(super) lost_commits: u64,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing from `s`.
fn checksum(big_endian: bool, data: &[u8], mut s: (u32, u32)) -> (u32, u32) {
    for chunk in data.chunks_exact(8) {
        let word = |b: &[u8]| {
            let b = [b[0], b[1], b[2], b[3]];
            if big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        };
        s.0 = s.0.wrapping_add(word(&chunk[..4]).wrapping_add(s.1));
        s.1 = s.1.wrapping_add(word(&chunk[4..]).wrapping_add(s.0));
    }
    s
}

/// Reads the WAL at `path` (absent or empty: nothing to check) and reports damage that would
/// make SQLite drop committed transactions.
pub(super) fn check(path: &Path) -> io::Result<Option<Damage>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(file);
    let mut header = [0u8; HEADER];
    if read_full(&mut reader, &mut header)? < HEADER {
        return Ok(None);
    }
    let big_endian = match be32(&header[0..4]) {
        0x377f_0682 => false,
        0x377f_0683 => true,
        // Not a WAL header SQLite would use either: it ignores the file.
        _ => return Ok(None),
    };
    let page = be32(&header[8..12]) as usize;
    let page = if page == 1 { MAX_PAGE } else { page };
    if !(512..=MAX_PAGE).contains(&page) || !page.is_power_of_two() {
        return Ok(None);
    }
    let salt = (be32(&header[16..20]), be32(&header[20..24]));
    let header_ok = checksum(big_endian, &header[..24], (0, 0))
        == (be32(&header[24..28]), be32(&header[28..32]));
    let mut running = checksum(big_endian, &header[..24], (0, 0));
    let mut frame = vec![0u8; FRAME_HEADER + page];
    let mut first_bad = (!header_ok).then_some(0);
    let (mut index, mut lost_commits) = (0u64, 0u64);
    while read_full(&mut reader, &mut frame)? == frame.len() {
        if (be32(&frame[8..12]), be32(&frame[12..16])) != salt {
            // A frame of an earlier generation of the log: the live log ends here.
            break;
        }
        let commit = be32(&frame[4..8]) != 0;
        match first_bad {
            None => {
                running = checksum(big_endian, &frame[..8], running);
                running = checksum(big_endian, &frame[FRAME_HEADER..], running);
                if running != (be32(&frame[16..20]), be32(&frame[20..24])) {
                    first_bad = Some(index);
                }
            }
            Some(_) if commit => lost_commits += 1,
            Some(_) => {}
        }
        index += 1;
    }
    Ok(first_bad
        .filter(|_| lost_commits > 0)
        .map(|first_bad_frame| Damage {
            first_bad_frame,
            lost_commits,
        }))
}

/// Reads until `buf` is full or the file ends; returns how many bytes were read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 512;

    /// A little-endian-checksummed log of frames, each a commit or not, with the salts
    /// `(1, 2)` and correct checksums.
    fn log(commits: &[bool]) -> Vec<u8> {
        let mut out = Vec::new();
        for word in [0x377f_0682u32, 3_007_000, PAGE as u32, 0, 1, 2] {
            out.extend(word.to_be_bytes());
        }
        let mut s = checksum(false, &out, (0, 0));
        out.extend(s.0.to_be_bytes());
        out.extend(s.1.to_be_bytes());
        for (i, commit) in commits.iter().enumerate() {
            let mut frame = Vec::new();
            for word in [i as u32 + 1, u32::from(*commit), 1, 2] {
                frame.extend(word.to_be_bytes());
            }
            let page = vec![i as u8 + 7; PAGE];
            s = checksum(false, &frame[..8], s);
            s = checksum(false, &page, s);
            frame.extend(s.0.to_be_bytes());
            frame.extend(s.1.to_be_bytes());
            frame.extend(page);
            out.extend(frame);
        }
        out
    }

    fn checked(bytes: &[u8]) -> Option<Damage> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x-wal");
        std::fs::write(&path, bytes).unwrap();
        check(&path).unwrap()
    }

    /// Flips one byte of the page of frame `i`.
    fn flip(bytes: &mut [u8], i: usize) {
        bytes[HEADER + i * (FRAME_HEADER + PAGE) + FRAME_HEADER + 10] ^= 0xff;
    }

    #[test]
    fn an_intact_log_passes() {
        assert_eq!(checked(&log(&[false, true, true, false, true])), None);
        assert_eq!(checked(&[]), None, "an empty log");
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check(&dir.path().join("absent")).unwrap(), None);
    }

    #[test]
    fn damage_before_committed_transactions_is_found() {
        let mut bytes = log(&[false, true, true, false, true]);
        flip(&mut bytes, 0);
        assert_eq!(
            checked(&bytes),
            Some(Damage {
                first_bad_frame: 0,
                lost_commits: 3
            })
        );
        let mut bytes = log(&[true, true, true]);
        flip(&mut bytes, 1);
        assert_eq!(checked(&bytes).map(|d| d.lost_commits), Some(1));
    }

    #[test]
    fn a_cut_short_last_transaction_is_normal() {
        let mut bytes = log(&[true, false, true]);
        flip(&mut bytes, 2);
        assert_eq!(checked(&bytes), None, "the last commit frame torn");
        let mut bytes = log(&[true, false, false]);
        bytes.truncate(bytes.len() - 100);
        assert_eq!(checked(&bytes), None, "a partial last frame");
    }

    #[test]
    fn frames_of_an_earlier_generation_end_the_log() {
        let mut bytes = log(&[true, true, true]);
        // Frame 1 and after carry other salts: left over from before the log was restarted.
        for i in 1..3 {
            let at = HEADER + i * (FRAME_HEADER + PAGE) + 8;
            bytes[at..at + 4].copy_from_slice(&9u32.to_be_bytes());
        }
        flip(&mut bytes, 2);
        assert_eq!(checked(&bytes), None);
    }
}
