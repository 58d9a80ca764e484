//! Reading `--logs` on every core: files in parallel, and a large file in chunks split at
//! line ends (each chunk starts after the first newline at or past its offset and ends with
//! the line that crosses its end); a gzip'd file is one piece, decoded by one thread. Each
//! run of consecutive pieces (its length set by the piece count alone) fills a collector of its
//! own; the collectors are merged in file order, so the counts, the strategy set kept and the
//! malformed lines named (by file and line) are those a single reader would find, whichever
//! thread read which run.

use super::{list_inputs, open, progress, total_bytes, Collector, InputError, LineSink, Pool};
use indicatif::ProgressBar;
use rayon::prelude::*;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Bytes per chunk of a plain file: large enough that a chunk's summaries cost little to
/// merge, small enough to keep both cores busy on one file of a few hundred MB.
pub const CHUNK_BYTES: u64 = 64 << 20;

/// At most this many pieces are read in a row into one collector (512 MiB of plain files);
/// fewer when there are few pieces, so that every core gets some.
const PIECES_PER_COLLECTOR: usize = 8;

/// Most malformed lines a piece names; the first few of all pieces are reported.
const EXAMPLES_PER_PIECE: usize = 5;

/// A piece of the input one thread reads.
struct Piece {
    file: PathBuf,
    /// Order of the piece among all (files sorted, then by offset).
    order: usize,
    /// Byte range of the lines it owns (a line belongs to the piece its first byte is in);
    /// a gzip'd file is one piece.
    start: u64,
    end: u64,
    gz: bool,
}

/// What a piece saw besides its records: complete lines, and its malformed lines by line
/// within the piece.
struct PieceLines {
    order: usize,
    file: PathBuf,
    lines: u64,
    malformed: Vec<(u64, String)>,
}

fn pieces(files: &[PathBuf], chunk_bytes: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    for f in files {
        let len = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        let gz = f.extension().is_some_and(|e| e == "gz");
        let step = if gz { u64::MAX } else { chunk_bytes.max(1) };
        let mut start = 0u64;
        loop {
            let end = start.saturating_add(step);
            out.push(Piece {
                file: f.clone(),
                order: out.len(),
                start,
                end: if gz { u64::MAX } else { end.min(len) },
                gz,
            });
            if gz || end >= len {
                break;
            }
            start = end;
        }
    }
    out
}

/// A reader at the first line `piece` owns, and that line's offset in the file.
fn open_piece(piece: &Piece) -> Result<(Box<dyn BufRead>, u64), InputError> {
    if piece.gz || piece.start == 0 {
        return Ok((open(&piece.file)?, 0));
    }
    let io = |source| InputError::Read {
        name: piece.file.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(&piece.file).map_err(|source| InputError::Open {
        path: piece.file.clone(),
        source,
    })?;
    f.seek(SeekFrom::Start(piece.start - 1)).map_err(io)?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    // The line crossing the piece's start belongs to the piece before.
    let mut skip = Vec::new();
    let skipped = r.read_until(b'\n', &mut skip).map_err(io)?;
    Ok((Box::new(r), piece.start - 1 + skipped as u64))
}

/// Read the lines `piece` owns into a fresh collector like `proto`.
fn read_piece<P: Pool>(
    piece: &Piece,
    c: &mut Collector<P>,
    bar: Option<&ProgressBar>,
) -> Result<PieceLines, InputError> {
    let name = piece.file.display().to_string();
    // Offset of the next line's first byte (a gzip'd piece has no end).
    let (mut r, mut pos) = open_piece(piece)?;
    let mut buf = Vec::with_capacity(1024);
    let mut lines = PieceLines {
        order: piece.order,
        file: piece.file.clone(),
        lines: 0,
        malformed: Vec::new(),
    };
    let mut unreported = 0u64;
    // Lines are read where they lie in the reader's buffer; only one that crosses the
    // buffer's end is copied (into `buf`).
    let io = |source| InputError::Read {
        name: name.clone(),
        source,
    };
    while piece.gz || pos < piece.end {
        let avail = r.fill_buf().map_err(io)?;
        if avail.is_empty() {
            if !buf.is_empty() {
                c.incomplete();
            }
            break;
        }
        let Some(k) = memchr::memchr(b'\n', avail) else {
            buf.extend_from_slice(avail);
            let n = avail.len();
            r.consume(n);
            continue;
        };
        let n = buf.len() + k + 1;
        let line = if buf.is_empty() {
            &avail[..k]
        } else {
            buf.extend_from_slice(&avail[..k]);
            &buf[..]
        };
        pos += n as u64;
        lines.lines += 1;
        unreported += n as u64;
        let examples = c.stats.malformed_examples.len();
        c.line(line, &String::new);
        r.consume(k + 1);
        buf.clear();
        if c.stats.malformed_examples.len() > examples {
            // Named once the lines of the pieces before are known.
            let why = c.stats.malformed_examples.pop().unwrap_or_default();
            if lines.malformed.len() < EXAMPLES_PER_PIECE {
                let why = why.strip_prefix(": ").unwrap_or(&why).to_string();
                lines.malformed.push((lines.lines, why));
            }
        }
        if unreported >= 1 << 20 {
            if let Some(b) = bar {
                b.inc(std::mem::take(&mut unreported));
            }
        }
    }
    if let Some(b) = bar {
        b.inc(unreported);
    }
    Ok(lines)
}

/// The first malformed lines of all pieces, named `file:line` as a single reader would.
fn name_malformed(mut pieces: Vec<PieceLines>) -> Vec<String> {
    pieces.sort_by_key(|p| p.order);
    let mut out = Vec::new();
    let mut before = 0u64;
    let mut file: Option<PathBuf> = None;
    for p in pieces {
        if file.as_ref() != Some(&p.file) {
            before = 0;
            file = Some(p.file.clone());
        }
        for (line, why) in &p.malformed {
            if out.len() < EXAMPLES_PER_PIECE {
                out.push(format!("{}:{}: {why}", p.file.display(), before + line));
            }
        }
        before += p.lines;
    }
    out
}

/// Read every file of `--logs PATH` on all cores into collectors like `proto` (empty), merged.
pub fn read_path_parallel<P: Pool + Send + Sync>(
    path: &Path,
    proto: &Collector<P>,
    chunk_bytes: u64,
) -> Result<Collector<P>, InputError> {
    let files = list_inputs(path)?;
    let bar = progress(total_bytes(&files));
    let pieces = pieces(&files, chunk_bytes);
    let run_len = (pieces.len() / 16).clamp(1, PIECES_PER_COLLECTOR);
    let (mut c, lines) = pieces
        .par_chunks(run_len)
        // One collector per run of pieces, read in order and merged in file order: the same
        // result whichever thread read which run, and the summaries' pages allocated once per
        // run rather than per piece (10% of the time at 1e7 records).
        .map(|run| {
            let mut c = proto.clone();
            let mut lines = Vec::with_capacity(run.len());
            for p in run {
                lines.push(read_piece(p, &mut c, bar.as_ref())?);
            }
            Ok::<_, InputError>((c, lines))
        })
        .try_reduce(
            || (proto.clone(), Vec::new()),
            |(mut a, mut la), (b, lb)| {
                a.merge(b);
                la.extend(lb);
                Ok((a, la))
            },
        )?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    c.stats.files = files.len();
    c.stats.malformed_examples = name_malformed(lines);
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::test_pool::collector;
    use crate::read::{read_path, Keying};
    use std::io::Write;

    fn line(i: u64) -> String {
        format!(
            r#"{{"ts_ms":{},"scenario":"default","chosen":"b","value_info":[{{"strategy":"a","cost":1.0,"qoe":{}}},{{"strategy":"b","cost":2.0,"qoe":{}}}]}}"#,
            (i % 7) * 900_000,
            0.1 + (i % 13) as f64 / 100.0,
            0.2 + (i % 17) as f64 / 50.0
        )
    }

    #[test]
    fn chunks_read_what_one_reader_reads() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut text = String::new();
        for i in 0..300 {
            text.push_str(&if i % 37 == 5 {
                "garbage".into()
            } else {
                line(i)
            });
            text.push('\n');
        }
        text.push_str("{\"ts_ms\":1,\"partial");
        std::fs::write(dir.path().join("a.jsonl"), &text).expect("write");
        std::fs::write(dir.path().join("b.jsonl"), format!("{}\nnope\n", line(3))).expect("b");
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(dir.path().join("c.jsonl.gz")).expect("create"),
            flate2::Compression::fast(),
        );
        gz.write_all(text.as_bytes()).expect("gz");
        gz.finish().expect("finish");

        let mut one = collector(900, Keying::OfDay);
        one.stats.files = read_path(dir.path(), &mut one).expect("reads");
        for chunk in [7, 97, 1000, 1 << 20] {
            let proto = collector(900, Keying::OfDay);
            let many = read_path_parallel(dir.path(), &proto, chunk).expect("reads");
            assert_eq!(many.stats, one.stats, "chunk {chunk}");
            assert_eq!(many.pools, one.pools, "chunk {chunk}");
        }
        assert_eq!(one.stats.malformed, 2 * 8 + 1);
        assert!(one.stats.malformed_examples[0]
            .ends_with("a.jsonl:6: expected value at line 1 column 1"));
    }
}
