//! One task's share of a tar archive ([`TaskParts`]), gathered on the
//! worker that fetched the task and, for a compressed archive, compressed
//! there, piece by piece, so the workers compress in parallel; then handed
//! to the writer, which puts the tasks in order.

use std::collections::BTreeSet;

use anyhow::{Context, Result};

use super::compress::{Segment, SegmentWriter, TarCompression};
use super::entries::write_piece;
use crate::plan::{FileEntry, Piece};

/// How many of a task's first pieces continue a file whose start is in an
/// earlier task (the pieces of one file follow each other in task order).
pub(super) fn continued_pieces(pieces: &[Piece]) -> usize {
    match pieces.first() {
        Some(first) if first.offset > 0 => {
            pieces.iter().take_while(|p| p.file == first.file).count()
        }
        _ => 0,
    }
}

/// One task's share of an archive, gathered piece by piece, in task order,
/// by the worker that fetches the task (`TarWriter::task`), then handed in
/// with `TarWriter::complete`. For a compressed archive each piece is
/// compressed as it arrives, so the worker holds compressed bytes only and
/// the workers compress in parallel.
pub struct TaskParts {
    pieces: Vec<Piece>,
    /// Per piece: whether the server returned it (false: the file was gone).
    present: Vec<bool>,
    file_mode: u32,
    body: PartsBody,
}

enum PartsBody {
    Raw(Vec<Option<Vec<u8>>>),
    Compressed {
        compression: TarCompression,
        /// The segment being written (boxed: a compressor's state is large).
        current: Option<Box<SegmentWriter>>,
        /// Finished: the pieces that continue a file started earlier.
        continued: Option<Segment>,
        /// Files of this task found gone at their first piece.
        omitted: BTreeSet<usize>,
    },
}

impl TaskParts {
    /// An empty share of a task, for an archive compressed as given whose
    /// files get `file_mode`.
    pub(super) fn new(compression: TarCompression, file_mode: u32) -> TaskParts {
        let body = match compression {
            TarCompression::None => PartsBody::Raw(Vec::new()),
            compression => PartsBody::Compressed {
                compression,
                current: None,
                continued: None,
                omitted: BTreeSet::new(),
            },
        };
        TaskParts {
            pieces: Vec::new(),
            present: Vec::new(),
            file_mode,
            body,
        }
    }

    /// Add the next piece of the task; `files` as for `TarWriter::complete`.
    pub fn add(&mut self, piece: Piece, data: Option<&[u8]>, files: &[FileEntry]) -> Result<()> {
        let file = files
            .get(piece.file)
            .with_context(|| format!("a task names file #{}, not in the plan", piece.file))?;
        match &mut self.body {
            PartsBody::Raw(held) => held.push(data.map(<[u8]>::to_vec)),
            PartsBody::Compressed {
                compression,
                current,
                continued,
                omitted,
            } => {
                // The first piece that is not part of a leading run
                // continuing an earlier task's file starts a new segment.
                if continued_pieces(&self.pieces) == self.pieces.len()
                    && !self.pieces.is_empty()
                    && self.pieces[0].file != piece.file
                {
                    *continued = current.take().map(|w| w.finish()).transpose()?;
                }
                let w = match current {
                    Some(w) => w,
                    None => current.insert(Box::new(SegmentWriter::new(*compression)?)),
                };
                write_piece(w.as_mut(), &piece, data, file, self.file_mode, omitted)?;
            }
        }
        self.pieces.push(piece);
        self.present.push(data.is_some());
        Ok(())
    }

    /// The task, ready to queue, and the bytes it holds.
    pub(super) fn finish(self) -> Result<Done> {
        let (body, bytes) = match self.body {
            PartsBody::Raw(held) => {
                let bytes = held.iter().flatten().map(|d| d.len() as u64).sum();
                (Body::Raw(held), bytes)
            }
            PartsBody::Compressed {
                current, continued, ..
            } => {
                let last = current.map(|w| w.finish()).transpose()?;
                // Without a finished leading run, the last segment is that
                // run when the whole task continues an earlier file.
                let (continued, rest) = match continued {
                    None if continued_pieces(&self.pieces) == self.pieces.len() => (last, None),
                    continued => (continued, last),
                };
                let bytes = [&continued, &rest]
                    .into_iter()
                    .flatten()
                    .map(|s| s.bytes.len() as u64)
                    .sum();
                (Body::Compressed { continued, rest }, bytes)
            }
        };
        Ok(Done {
            pieces: self.pieces,
            present: self.present,
            body,
            bytes,
        })
    }
}

/// A completed task waiting for its turn.
pub(super) struct Done {
    pub(super) pieces: Vec<Piece>,
    /// Per piece: whether the server returned it.
    pub(super) present: Vec<bool>,
    pub(super) body: Body,
    /// Bytes held in memory for it.
    pub(super) bytes: u64,
}

pub(super) enum Body {
    /// Uncompressed output: the pieces' bytes, written when it is the
    /// task's turn.
    Raw(Vec<Option<Vec<u8>>>),
    /// The pieces that continue a file started earlier ([`continued_pieces`];
    /// dropped if that file was left out) and the rest, each a segment.
    Compressed {
        continued: Option<Segment>,
        rest: Option<Segment>,
    },
}
