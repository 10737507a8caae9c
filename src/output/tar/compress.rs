//! Compression of the tar output: what `-Z` asks for ([`TarCompression`],
//! parsed as PostgreSQL's pg_basebackup parses it), and compressing an
//! archive in independent pieces, so that every worker compresses the
//! tasks it fetched, in parallel, and the archive is the pieces written one
//! after another in task order.
//!
//! Each piece ([`Segment`]) is complete on its own and their concatenation
//! is one valid file for the usual tools and for PostgreSQL's own
//! (pg_verifybackup reads tar backups from 18 on):
//! - gzip: one gzip member for the whole archive, as pigz writes it: a
//!   header, then each piece as raw deflate data ending in a sync flush
//!   (byte-aligned, no final block), then an empty final block and the
//!   trailer with the CRC-32 and size of all pieces together (CRC-32 values
//!   combine). Some gzip readers stop at the end of the first member, so
//!   one member is the safe form;
//! - zstd: frames of 2 MB of tar bytes, each with its content checksum (a
//!   zstd stream is a sequence of frames: the `zstd` command and libzstd
//!   read them all), by the system's libzstd, as PostgreSQL's (the one
//!   bundled by the zstd crate, 1.5.7 against Debian's 1.5.4, took more
//!   CPU for archives 6% smaller than PostgreSQL's);
//! - lz4: one frame per piece, as PostgreSQL's pg_basebackup writes them
//!   (64 kB linked blocks, no content checksum), which the `lz4` command
//!   and liblz4 read as one stream; made by liblz4 (the `lz4` crate), about
//!   twice as fast here as the pure-Rust lz4_flex.
//!
//! A piece starts from an empty dictionary, so each costs a little ratio:
//! with pieces of a task (8 MB by default) that is well under 1%.

use std::io::{self, Write};

use anyhow::{Context, Result, bail};

/// Compression of tar output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TarCompression {
    None,
    /// gzip at this level (1..=9).
    Gzip(u32),
    /// The lz4 frame format, as the `lz4` command reads and writes it.
    Lz4,
    /// zstd at this level.
    Zstd(i32),
}

/// gzip's own default, what `-z` and `-Z gzip` mean.
pub const GZIP_DEFAULT_LEVEL: u32 = 6;

/// Parse a `-Z` value as PostgreSQL's pg_basebackup does: `none`, `gzip`,
/// `lz4`, `zstd`, each optionally with `:LEVEL` or `:level=LEVEL`, and an
/// optional `client-` prefix; a bare integer is a gzip level (`0`: none).
/// `server-` compression does not exist for a copy taken over SQL, and
/// neither do zstd's `workers` and `long` options here.
pub fn parse_compression(s: &str) -> Result<TarCompression> {
    let s = s.trim();
    if s.starts_with("server-") {
        bail!(
            "server-side compression ({s}) is not possible for a backup taken over SQL; use client-side compression"
        );
    }
    let s = s.strip_prefix("client-").unwrap_or(s);
    if let Ok(level) = s.parse::<i64>() {
        return match level {
            0 => Ok(TarCompression::None),
            1..=9 => Ok(TarCompression::Gzip(level as u32)),
            _ => bail!(
                "compression algorithm \"gzip\" expects a compression level between 1 and 9 (default at {GZIP_DEFAULT_LEVEL})"
            ),
        };
    }
    let (algorithm, detail) = match s.split_once(':') {
        Some((a, d)) => (a, Some(d)),
        None => (s, None),
    };
    let level = match detail {
        None => None,
        Some(d) => Some(parse_level(algorithm, d)?),
    };
    let out_of_range = |min: i64, max: i64, default: i64| {
        anyhow::anyhow!(
            "compression algorithm \"{algorithm}\" expects a compression level between {min} and {max} (default at {default})"
        )
    };
    match algorithm {
        "none" => match level {
            None => Ok(TarCompression::None),
            Some(_) => bail!("compression algorithm \"none\" does not accept a compression level"),
        },
        "gzip" => match level {
            None => Ok(TarCompression::Gzip(GZIP_DEFAULT_LEVEL)),
            Some(l @ 1..=9) => Ok(TarCompression::Gzip(l as u32)),
            Some(_) => Err(out_of_range(1, 9, GZIP_DEFAULT_LEVEL as i64)),
        },
        "lz4" => match level {
            None | Some(0) => Ok(TarCompression::Lz4),
            Some(1..=12) => {
                log::warn!("lz4 compression uses its one fast level; the level is ignored");
                Ok(TarCompression::Lz4)
            }
            Some(_) => Err(out_of_range(1, 12, 0)),
        },
        "zstd" => {
            let range = zstd::compression_level_range();
            let default = zstd::DEFAULT_COMPRESSION_LEVEL;
            match level {
                None => Ok(TarCompression::Zstd(default)),
                Some(l) => match i32::try_from(l).ok().filter(|l| range.contains(l)) {
                    Some(l) => Ok(TarCompression::Zstd(l)),
                    None => Err(out_of_range(
                        *range.start() as i64,
                        *range.end() as i64,
                        default as i64,
                    )),
                },
            }
        }
        other => {
            bail!("unrecognized compression algorithm: \"{other}\" (use none, gzip, lz4 or zstd)")
        }
    }
}

/// The level in a compression detail: `5` or `level=5`.
fn parse_level(algorithm: &str, detail: &str) -> Result<i64> {
    let value = match detail.split_once('=') {
        None => detail,
        Some(("level", v)) => v,
        Some((key, _)) => bail!(
            "compression option \"{key}\" is not supported for \"{algorithm}\" (only a level is)"
        ),
    };
    value.trim().parse::<i64>().map_err(|_| {
        anyhow::anyhow!(
            "invalid compression specification for \"{algorithm}\": \"{detail}\" is not a level"
        )
    })
}

impl TarCompression {
    /// The file name ending of an archive: `.tar`, `.tar.gz`, `.tar.lz4`, `.tar.zst`.
    pub fn extension(&self) -> &'static str {
        match self {
            TarCompression::None => ".tar",
            TarCompression::Gzip(_) => ".tar.gz",
            TarCompression::Lz4 => ".tar.lz4",
            TarCompression::Zstd(_) => ".tar.zst",
        }
    }
}

/// One compressed piece of the archive, and what it holds before
/// compression.
pub struct Segment {
    pub bytes: Vec<u8>,
    /// Length of the tar bytes it holds.
    pub raw_len: u64,
    /// gzip: CRC-32 of those tar bytes, for the trailer.
    crc: Option<crc32fast::Hasher>,
}

/// The tar bytes of one piece being compressed.
enum Encoder {
    Deflate(flate2::write::DeflateEncoder<Vec<u8>>, crc32fast::Hasher),
    Lz4(lz4::Encoder<Vec<u8>>),
    /// zstd in frames of [`ZSTD_FRAME`] tar bytes, each compressed in one
    /// call: zstd's streaming mode copies its input into a window that wraps
    /// every 2 MB and then takes its slower external-dictionary path (a
    /// third of the CPU in perf).
    Zstd {
        raw: Vec<u8>,
        out: Vec<u8>,
        compressor: Box<zstd::bulk::Compressor<'static>>,
    },
}

/// Tar bytes per zstd frame: big enough for zstd's 2 MB window at level 3,
/// small enough to stay in the CPU cache.
const ZSTD_FRAME: usize = 2 << 20;

/// Compress `raw` as one zstd frame, with its content checksum, onto `out`.
fn zstd_frame(
    compressor: &mut zstd::bulk::Compressor<'static>,
    raw: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    out.extend_from_slice(&compressor.compress(raw)?);
    raw.clear();
    Ok(())
}

/// A writer that compresses into a [`Segment`]: what the tar writer's
/// workers write their tasks into.
pub struct SegmentWriter {
    encoder: Encoder,
    raw_len: u64,
}

impl Write for SegmentWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.encoder {
            Encoder::Deflate(e, crc) => {
                let n = e.write(buf)?;
                crc.update(&buf[..n]);
                n
            }
            Encoder::Lz4(e) => e.write(buf)?,
            Encoder::Zstd {
                raw,
                out,
                compressor,
            } => {
                let n = buf.len().min(ZSTD_FRAME - raw.len());
                raw.extend_from_slice(&buf[..n]);
                if raw.len() == ZSTD_FRAME {
                    zstd_frame(compressor, raw, out)?;
                }
                n
            }
        };
        self.raw_len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SegmentWriter {
    pub fn new(compression: TarCompression) -> Result<SegmentWriter> {
        let encoder = match compression {
            TarCompression::None => anyhow::bail!("an uncompressed archive has no segments"),
            TarCompression::Gzip(level) => Encoder::Deflate(
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(level)),
                crc32fast::Hasher::new(),
            ),
            TarCompression::Lz4 => Encoder::Lz4(
                // PostgreSQL's settings (astreamer_lz4.c: all preferences
                // zeroed but the level): 64 kB linked blocks, no checksums.
                // A content checksum would cost as much as the compression,
                // and the lz4 command (1.9.4) cannot read a frame that
                // follows one with block checksums but no content checksum.
                lz4::EncoderBuilder::new()
                    .level(0)
                    .block_size(lz4::BlockSize::Max64KB)
                    .block_mode(lz4::BlockMode::Linked)
                    .block_checksum(lz4::liblz4::BlockChecksum::NoBlockChecksum)
                    .checksum(lz4::ContentChecksum::NoChecksum)
                    .build(Vec::new())
                    .context("cannot set up lz4 compression")?,
            ),
            TarCompression::Zstd(level) => {
                let mut compressor =
                    zstd::bulk::Compressor::new(level).context("cannot set up zstd compression")?;
                compressor.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
                Encoder::Zstd {
                    raw: Vec::with_capacity(ZSTD_FRAME),
                    out: Vec::new(),
                    compressor: Box::new(compressor),
                }
            }
        };
        Ok(SegmentWriter {
            encoder,
            raw_len: 0,
        })
    }

    pub fn finish(self) -> Result<Segment> {
        let (bytes, crc) = match self.encoder {
            Encoder::Deflate(mut e, crc) => {
                // A sync flush ends the deflate data on a byte boundary
                // without a final block, so the next piece can follow. The
                // encoder, dropped, then finishes into the emptied vector.
                e.flush()?;
                (std::mem::take(e.get_mut()), Some(crc))
            }
            Encoder::Lz4(e) => {
                let (bytes, result) = e.finish();
                result?;
                (bytes, None)
            }
            Encoder::Zstd {
                mut raw,
                mut out,
                mut compressor,
            } => {
                if !raw.is_empty() {
                    zstd_frame(&mut compressor, &mut raw, &mut out)?;
                }
                (out, None)
            }
        };
        Ok(Segment {
            bytes,
            raw_len: self.raw_len,
            crc,
        })
    }
}

/// Compress what `write` writes into one segment.
pub fn compress(
    compression: TarCompression,
    write: impl FnOnce(&mut SegmentWriter) -> Result<()>,
) -> Result<Segment> {
    let mut w = SegmentWriter::new(compression)?;
    write(&mut w)?;
    w.finish()
}

/// gzip member header: magic, deflate, no flags, no mtime, no extra flags,
/// OS "Unix" (as gzip writes it).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
/// An empty final deflate block (fixed Huffman codes, end of block).
const DEFLATE_FINAL_BLOCK: [u8; 2] = [0x03, 0x00];

/// Puts segments together into one archive file, in order.
pub struct Assembler {
    compression: TarCompression,
    /// gzip: CRC-32 and length of everything so far.
    crc: crc32fast::Hasher,
    len: u64,
    started: bool,
}

impl Assembler {
    pub fn new(compression: TarCompression) -> Assembler {
        Assembler {
            compression,
            crc: crc32fast::Hasher::new(),
            len: 0,
            started: false,
        }
    }

    /// Append `segment` to `out`.
    pub fn put(&mut self, out: &mut dyn Write, segment: &Segment) -> Result<()> {
        self.start(out)?;
        if let Some(crc) = &segment.crc {
            self.crc.combine(crc);
        }
        self.len += segment.raw_len;
        out.write_all(&segment.bytes)
            .context("cannot write the tar output")
    }

    fn start(&mut self, out: &mut dyn Write) -> Result<()> {
        if !self.started && matches!(self.compression, TarCompression::Gzip(_)) {
            out.write_all(&GZIP_HEADER)
                .context("cannot write the tar output")?;
        }
        self.started = true;
        Ok(())
    }

    /// End the file (gzip: the final block and the trailer).
    pub fn finish(mut self, out: &mut dyn Write) -> Result<()> {
        self.start(out)?;
        if matches!(self.compression, TarCompression::Gzip(_)) {
            // The trailer: CRC-32 and length modulo 2^32, little-endian.
            let len = self.len as u32;
            let mut trailer = DEFLATE_FINAL_BLOCK.to_vec();
            trailer.extend_from_slice(&self.crc.finalize().to_le_bytes());
            trailer.extend_from_slice(&len.to_le_bytes());
            out.write_all(&trailer)
                .context("cannot write the tar output")?;
        }
        Ok(())
    }
}

/// Decode concatenated lz4 frames (lz4_flex's reader stops after one, the
/// lz4 command and liblz4 go on).
#[cfg(test)]
pub fn lz4_decode_all(mut packed: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    while !packed.is_empty() {
        lz4_flex::frame::FrameDecoder::new(&mut packed)
            .read_to_end(&mut out)
            .expect("valid lz4 frames");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// Pieces of several sizes, empty ones among them (a task whose only
    /// file vanished writes nothing).
    fn pieces() -> Vec<Vec<u8>> {
        (0..6u32)
            .map(|i| {
                (0..(i % 3 * 70_000 + i % 2))
                    .map(|n| (n.wrapping_mul(i + 7) % 251) as u8)
                    .collect()
            })
            .collect()
    }

    fn assemble(compression: TarCompression) -> (Vec<u8>, Vec<u8>) {
        let mut plain = Vec::new();
        let mut packed = Vec::new();
        let mut asm = Assembler::new(compression);
        for p in pieces() {
            plain.extend_from_slice(&p);
            let seg = compress(compression, |w| Ok(w.write_all(&p)?)).unwrap();
            assert_eq!(seg.raw_len, p.len() as u64);
            asm.put(&mut packed, &seg).unwrap();
        }
        asm.finish(&mut packed).unwrap();
        (plain, packed)
    }

    #[test]
    fn gzip_pieces_make_one_member() {
        for level in [1, 6, 9] {
            let (plain, packed) = assemble(TarCompression::Gzip(level));
            // A single-member decoder reads it whole: it is one member.
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&packed[..])
                .read_to_end(&mut out)
                .unwrap();
            assert!(out == plain, "level {level}");
            assert!(packed.len() < plain.len());
        }
    }

    #[test]
    fn zstd_and_lz4_frames_concatenate() {
        let (plain, packed) = assemble(TarCompression::Zstd(3));
        assert!(zstd::decode_all(&packed[..]).unwrap() == plain);
        let (plain, packed) = assemble(TarCompression::Lz4);
        assert!(lz4_decode_all(&packed) == plain);
    }

    #[test]
    fn an_empty_gzip_archive_is_valid() {
        let mut packed = Vec::new();
        Assembler::new(TarCompression::Gzip(6))
            .finish(&mut packed)
            .unwrap();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_end(&mut out)
            .unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn parses_compression_like_pg_basebackup() {
        use TarCompression::*;
        let ok = |s: &str| parse_compression(s).unwrap();
        assert_eq!(ok("gzip"), Gzip(6));
        assert_eq!(ok("gzip:5"), Gzip(5));
        assert_eq!(ok("gzip:level=9"), Gzip(9));
        assert_eq!(ok("client-gzip:1"), Gzip(1));
        assert_eq!(ok("5"), Gzip(5));
        assert_eq!(ok("0"), None);
        assert_eq!(ok("none"), None);
        assert_eq!(ok("lz4"), Lz4);
        assert_eq!(ok("lz4:0"), Lz4);
        assert_eq!(ok("zstd"), Zstd(3));
        assert_eq!(ok("zstd:19"), Zstd(19));
        assert_eq!(ok("zstd:-3"), Zstd(-3));
        for bad in [
            "gzip:0",
            "gzip:10",
            "10",
            "none:1",
            "lz4:13",
            "zstd:99",
            "zstd:workers=4",
            "zstd:x",
            "brotli",
            "server-gzip",
            "",
        ] {
            assert!(parse_compression(bad).is_err(), "{bad}");
        }
        assert_eq!(ok("gzip").extension(), ".tar.gz");
        assert_eq!(None.extension(), ".tar");
        assert_eq!(Lz4.extension(), ".tar.lz4");
        assert_eq!(Zstd(1).extension(), ".tar.zst");
    }
}
