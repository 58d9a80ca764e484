//! Finds the line and column of a value in a YAML document by its path
//! (`filters[1].hydrus.strategies[0].cluster`), so that errors found after parsing (an unknown
//! cluster, a bad address) name the place in the file, as parse errors do.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line and column (1-based) of every mapping key and sequence item, by path.
#[derive(Debug, Default)]
pub struct Locator {
    marks: HashMap<String, (usize, usize)>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    marks: HashMap<String, (usize, usize)>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Builder {
    /// The path of the value that starts now, consuming the pending key or sequence slot.
    fn value_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { path, key }) => key.take().map(|k| join(path, &k)),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
        }
    }

    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let at = (mark.line(), mark.col() + 1);
        match ev {
            Event::Scalar(text, ..) => {
                if self.expecting_key() {
                    if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                        self.marks.insert(join(path, &text), at);
                        *key = Some(text);
                    }
                } else if let Some(p) = self.value_path() {
                    self.marks.entry(p).or_insert(at);
                }
            }
            Event::Alias(_) => {
                if let Some(p) = self.value_path() {
                    self.marks.entry(p).or_insert(at);
                }
            }
            Event::MappingStart(..) => {
                let path = self.value_path().unwrap_or_default();
                self.marks.entry(path.clone()).or_insert(at);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.value_path().unwrap_or_default();
                self.marks.entry(path.clone()).or_insert(at);
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

impl Locator {
    /// Index a document. A document that does not parse yields an empty index (its parse
    /// error is reported by the deserializer, with its own location).
    pub fn new(text: &str) -> Self {
        let mut b = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut b, false).is_err() {
            return Self::default();
        }
        Self { marks: b.marks }
    }

    /// The position of `path`, or of its nearest ancestor that is in the document.
    pub fn find(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Some(&at) = self.marks.get(p) {
                return Some(at);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_items() {
        let text = "a: 1\nlist:\n  - x: 2\n    y: [3, 4]\n  - z: 5\n";
        let l = Locator::new(text);
        assert_eq!(l.find("a"), Some((1, 1)));
        assert_eq!(l.find("list[0].x"), Some((3, 5)));
        assert_eq!(l.find("list[0].y"), Some((4, 5)));
        assert_eq!(l.find("list[1].z"), Some((5, 5)));
        // a missing leaf reports its parent
        assert_eq!(l.find("list[1].nope"), l.find("list[1]"));
        assert_eq!(l.find("zzz"), None);
    }
}
