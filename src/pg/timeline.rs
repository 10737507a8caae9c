//! Timelines: which timeline holds which stretch of WAL.
//!
//! A standby that follows a promoted server switches timelines mid-stream
//! (a primary does when it is promoted itself). The copy then needs the WAL
//! of every timeline between the backup's start and stop, each up to where
//! the next began, and the manifest lists one WAL range per timeline. The
//! server records each switch in `<TLI>.history`: one line per ancestor,
//! `<parent TLI>\t<switch LSN>\t<reason>`, oldest first.

use anyhow::{Context, Result};

use crate::pg::{Lsn, parse_lsn};

/// One timeline's stretch of WAL the backup needs, as in the manifest's `WAL-Ranges`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalRange {
    pub timeline: u32,
    pub start_lsn: u64,
    pub end_lsn: u64,
}

/// One timeline and the WAL positions it holds: [begin, end), end None for
/// the newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    timeline: u32,
    begin: Lsn,
    end: Option<Lsn>,
}

/// The ancestry of one timeline, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    spans: Vec<Span>,
}

impl History {
    /// A timeline with no recorded ancestors (timeline 1, or no history file).
    pub fn single(timeline: u32) -> History {
        History {
            spans: vec![Span {
                timeline,
                begin: 0,
                end: None,
            }],
        }
    }

    /// The ancestry of `timeline` from the contents of its history file.
    pub fn parse(timeline: u32, text: &str) -> Result<History> {
        let mut spans = Vec::new();
        let mut begin = 0;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let bad = || format!("invalid line in {timeline:08X}.history: {line:?}");
            let parent: u32 = fields
                .next()
                .and_then(|f| f.parse().ok())
                .with_context(bad)?;
            let switch = fields.next().with_context(bad)?;
            let switch = parse_lsn(switch)
                .with_context(|| format!("invalid LSN {switch:?}"))
                .with_context(bad)?;
            spans.push(Span {
                timeline: parent,
                begin,
                end: Some(switch),
            });
            begin = switch;
        }
        spans.push(Span {
            timeline,
            begin,
            end: None,
        });
        Ok(History { spans })
    }

    /// The manifest's WAL ranges of a backup from `start` to `end`: one per
    /// timeline, newest first, as PostgreSQL lists them.
    pub fn ranges(&self, start: Lsn, end: Lsn) -> Vec<WalRange> {
        self.spans
            .iter()
            .rev()
            .filter(|s| s.begin < end && s.end.is_none_or(|e| e > start))
            .map(|s| WalRange {
                timeline: s.timeline,
                start_lsn: s.begin.max(start),
                end_lsn: s.end.map_or(end, |e| e.min(end)),
            })
            .collect()
    }

    /// Every timeline of the ancestry, oldest first: (timeline, begin, end),
    /// end None for the newest.
    pub fn entries(&self) -> impl Iterator<Item = (u32, Lsn, Option<Lsn>)> + '_ {
        self.spans.iter().map(|s| (s.timeline, s.begin, s.end))
    }

    /// Whether `timeline` is this one or one of its ancestors.
    pub fn descends_from(&self, timeline: u32) -> bool {
        self.spans.iter().any(|s| s.timeline == timeline)
    }

    /// Where this timeline began (0 for one without ancestors).
    pub fn begin(&self) -> Lsn {
        self.spans.last().expect("a history has a timeline").begin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As PostgreSQL 15 wrote it after two promotions.
    const THREE: &str = "1\t0/5000060\tno recovery target specified\n\n\
                         2\t0/7A000A0\tno recovery target specified\n";

    #[test]
    fn history_files_are_parsed() {
        let h = History::parse(3, THREE).unwrap();
        assert_eq!(h.begin(), 0x7A000A0);
        assert!(h.descends_from(1) && h.descends_from(3) && !h.descends_from(4));
        assert!(History::parse(2, "x\t0/1\n").is_err());
        assert!(History::parse(2, "1\tnonsense\n").is_err());
        assert_eq!(History::single(1).begin(), 0);
    }

    #[test]
    fn ranges_cover_each_timeline_newest_first() {
        let h = History::parse(3, THREE).unwrap();
        let r = |timeline, start_lsn, end_lsn| WalRange {
            timeline,
            start_lsn,
            end_lsn,
        };
        assert_eq!(
            h.ranges(0x4000028, 0x9000100),
            [
                r(3, 0x7A000A0, 0x9000100),
                r(2, 0x5000060, 0x7A000A0),
                r(1, 0x4000028, 0x5000060),
            ]
        );
        // A backup within one timeline has one range.
        assert_eq!(h.ranges(0x5100000, 0x6000000), [r(2, 0x5100000, 0x6000000)]);
        assert_eq!(h.ranges(0x8000000, 0x9000000), [r(3, 0x8000000, 0x9000000)]);
        // A backup that ends where a timeline begins needs none of it.
        assert_eq!(h.ranges(0x4000000, 0x5000060), [r(1, 0x4000000, 0x5000060)]);
        assert_eq!(
            History::single(1).ranges(0x100, 0x200),
            [r(1, 0x100, 0x200)]
        );
    }
}
