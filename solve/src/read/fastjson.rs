//! A scanner for the common log line: reads the few fields the solver uses straight from the
//! bytes and skips the others without building anything. It profiles 2-3 times faster than
//! serde's borrowed deserializer on our records (half the solver's time was serde's), and
//! accepts only what that deserializer would read the same way: a line with any backslash,
//! control character or byte not in UTF-8, number or literal out of the JSON
//! grammar, duplicate or missing field, or a type serde would refuse returns `None`, and the caller parses it with serde (which
//! reads it, or names what is wrong with it).

/// The fields of one record the solver uses; strings are byte ranges of the line.
#[derive(Debug, Default, PartialEq)]
pub struct Fields {
    pub ts_ms: u64,
    pub scenario: Option<(usize, usize)>,
    /// A non-null `scenario_raw` is present.
    pub scenario_raw: bool,
    pub strategy_set: Option<(usize, usize)>,
    pub chosen: (usize, usize),
    /// The route the record names, when it names one.
    pub route: Option<(usize, usize)>,
}

/// One `value_info` entry: the strategy's name (a byte range), cost and QoE, and where its cost
/// per resource is in the `costs` that [`parse`] fills (`start..end`; empty when the cost is a
/// plain number).
pub type Value = ((usize, usize), f64, f64, (u32, u32));

/// One resource's cost of a `value_info` entry: the resource's name (a byte range) and the cost.
pub type ResourceCost = ((usize, usize), f64);

const MAX_DEPTH: usize = 100;

/// The powers of ten an `f64` holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The digits of `b` from `*i` on, appended to `mantissa` (wrapping: the caller counts them),
/// eight at a time while they last (a QoE score has 16).
fn digits(b: &[u8], i: &mut usize, mantissa: &mut u64) {
    while let Some(eight) = b.get(*i..*i + 8) {
        let mut v = u64::from_le_bytes(eight.try_into().unwrap_or_default());
        let all_digits = (v & 0xF0F0_F0F0_F0F0_F0F0)
            | ((v.wrapping_add(0x0606_0606_0606_0606) & 0xF0F0_F0F0_F0F0_F0F0) >> 4)
            == 0x3333_3333_3333_3333;
        if !all_digits {
            break;
        }
        // Pairs, then fours, then all eight (the first byte is the most significant digit).
        v -= 0x3030_3030_3030_3030;
        v = v.wrapping_mul(10).wrapping_add(v >> 8);
        let v1 = (v & 0x0000_00FF_0000_00FF).wrapping_mul(100 + (1_000_000 << 32));
        let v2 = ((v >> 16) & 0x0000_00FF_0000_00FF).wrapping_mul(1 + (10_000 << 32));
        let eight_digits = u64::from((v1.wrapping_add(v2) >> 32) as u32);
        *mantissa = mantissa
            .wrapping_mul(100_000_000)
            .wrapping_add(eight_digits);
        *i += 8;
    }
    while let Some(d) = b.get(*i).filter(|c| c.is_ascii_digit()) {
        *mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
        *i += 1;
    }
}

/// Where the first `"` of `b` is: eight bytes at a time (strings here are short, too short
/// for memchr's setup to pay).
fn quote_at(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(eight) = b.get(i..i + 8) {
        let v = u64::from_le_bytes(eight.try_into().unwrap_or_default()) ^ 0x2222_2222_2222_2222;
        // The lowest byte that was a quote (now zero) sets the lowest flag.
        let zero = v.wrapping_sub(0x0101_0101_0101_0101) & !v & 0x8080_8080_8080_8080;
        if zero != 0 {
            return Some(i + (zero.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b[i..].iter().position(|&c| c == b'"').map(|k| i + k)
}

struct Scanner<'a> {
    /// The line, checked for UTF-8 once (a line that is not goes to serde).
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    /// Skip whitespace, then expect `c`.
    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    /// A string (the line has no escape or control character: see [`parse`]): its contents'
    /// byte range.
    fn string(&mut self) -> Option<(usize, usize)> {
        self.eat(b'"')?;
        let start = self.i;
        let len = quote_at(&self.b[start..])?;
        self.i = start + len + 1;
        Some((start, start + len))
    }

    /// A string serde reads as text (a key, or a field the solver uses).
    fn text(&mut self) -> Option<(usize, usize)> {
        self.string()
    }

    /// A number as the JSON grammar has it: its text.
    fn number(&mut self) -> Option<&'a str> {
        self.ws();
        let start = self.i;
        let b = self.b;
        let digits = |i: &mut usize| {
            let s = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i > s
        };
        let mut i = start;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        let int_start = i;
        if !digits(&mut i) || (b[int_start] == b'0' && i - int_start > 1) {
            return None;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            digits(&mut i).then_some(())?;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            digits(&mut i).then_some(())?;
        }
        self.i = i;
        self.s.get(start..i)
    }

    /// A number as the JSON grammar has it, as `f64`: exactly as the standard library reads
    /// it, and in one pass when its digits fit in 2^53 and it has at most 22 decimals without
    /// an exponent (Clinger's fast path: both are exact `f64`s, so one division rounds
    /// correctly), which is every cost and most QoE scores as `ryu` writes them.
    fn float(&mut self) -> Option<f64> {
        self.ws();
        let b = self.b;
        let start = self.i;
        let mut i = start;
        let negative = b.get(i) == Some(&b'-');
        if negative {
            i += 1;
        }
        let int_start = i;
        let mut mantissa: u64 = 0;
        digits(b, &mut i, &mut mantissa);
        let int_digits = i - int_start;
        if int_digits == 0 || (b[int_start] == b'0' && int_digits > 1) {
            return None;
        }
        let mut decimals = 0;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let frac_start = i;
            digits(b, &mut i, &mut mantissa);
            decimals = i - frac_start;
            if decimals == 0 {
                return None;
            }
        }
        if !matches!(b.get(i), Some(b'e' | b'E'))
            && int_digits + decimals <= 19
            && mantissa <= 1 << 53
            && decimals < POW10.len()
        {
            self.i = i;
            let x = mantissa as f64 / POW10[decimals];
            return Some(if negative { -x } else { x });
        }
        self.i = start;
        let x: f64 = self.number()?.parse().ok()?;
        x.is_finite().then_some(x)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.ws();
        self.expect(word)
    }

    /// Skip any value.
    fn skip(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => {
                self.i += 1;
                if self.peek()? == b'}' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.string()?;
                    self.eat(b':')?;
                    self.skip(depth + 1)?;
                    if self.end_of(b'}')? {
                        return Some(());
                    }
                }
            }
            b'[' => {
                self.i += 1;
                if self.peek()? == b']' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.skip(depth + 1)?;
                    if self.end_of(b']')? {
                        return Some(());
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(drop),
        }
    }

    /// After a member: `,` (false: more follow) or `close` (true).
    fn end_of(&mut self, close: u8) -> Option<bool> {
        match self.peek()? {
            b',' => {
                self.i += 1;
                Some(false)
            }
            c if c == close => {
                self.i += 1;
                Some(true)
            }
            _ => None,
        }
    }

    /// `null` (None) or a string.
    fn optional_string(&mut self) -> Option<Option<(usize, usize)>> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(None);
        }
        self.text().map(Some)
    }

    /// `{"strategy":"NAME","cost":C,"qoe":Q}` exactly as hydrus writes it, else `None` with
    /// nothing read (the general path reads it, or refuses it).
    fn value_as_written(&mut self, costs: &mut Vec<ResourceCost>) -> Option<Value> {
        let (start, len) = (self.i, costs.len());
        let v = self.value_in_order(costs);
        if v.is_none() {
            self.i = start;
            costs.truncate(len);
        }
        v
    }

    fn value_in_order(&mut self, costs: &mut Vec<ResourceCost>) -> Option<Value> {
        self.expect(b"{\"strategy\":")?;
        let strategy = self.string()?;
        self.expect(b",\"cost\":")?;
        let (cost, range) = self.cost(costs)?;
        self.expect(b",\"qoe\":")?;
        let qoe = self.float()?;
        self.expect(b"}")?;
        Some((strategy, cost, qoe, range))
    }

    /// A cost: a number, or an object by resource (`{"large":34.0,"small":2.0}`, names in
    /// increasing order as hydrus writes them, not empty: else `None` and serde reads it) whose
    /// entries go to `costs`; the number is then their sum.
    fn cost(&mut self, costs: &mut Vec<ResourceCost>) -> Option<(f64, (u32, u32))> {
        if self.peek()? != b'{' {
            return Some((self.float()?, (0, 0)));
        }
        self.i += 1;
        let start = costs.len();
        if self.peek()? == b'}' {
            return None;
        }
        let mut sum = 0.0;
        loop {
            let name = self.text()?;
            self.eat(b':')?;
            let v = self.float()?;
            if let Some(&(last, _)) = costs[start..].last() {
                if self.b[last.0..last.1] >= self.b[name.0..name.1] {
                    return None;
                }
            }
            costs.push((name, v));
            sum += v;
            if self.end_of(b'}')? {
                break;
            }
        }
        let range = (u32::try_from(start).ok()?, u32::try_from(costs.len()).ok()?);
        Some((sum, range))
    }

    /// The bytes `word`, here.
    fn expect(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.i..]
            .starts_with(word)
            .then(|| self.i += word.len())
    }

    /// One `{"strategy":..,"cost":..,"qoe":..}` (other members skipped).
    fn value(&mut self, costs: &mut Vec<ResourceCost>) -> Option<Value> {
        if let Some(v) = self.value_as_written(costs) {
            return Some(v);
        }
        self.eat(b'{')?;
        let (mut strategy, mut cost, mut qoe) = (None, None, None);
        if self.peek()? == b'}' {
            return None;
        }
        loop {
            let key = self.text()?;
            self.eat(b':')?;
            match &self.b[key.0..key.1] {
                b"strategy" if strategy.is_none() => strategy = Some(self.text()?),
                b"cost" if cost.is_none() => cost = Some(self.cost(costs)?),
                b"qoe" if qoe.is_none() => qoe = Some(self.float()?),
                b"strategy" | b"cost" | b"qoe" => return None,
                _ => self.skip(1)?,
            }
            if self.end_of(b'}')? {
                let (cost, range) = cost?;
                return Some((strategy?, cost, qoe?, range));
            }
        }
    }

    fn values(&mut self, out: &mut Vec<Value>, costs: &mut Vec<ResourceCost>) -> Option<()> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        loop {
            out.push(self.value(costs)?);
            if self.end_of(b']')? {
                return Some(());
            }
        }
    }
}

const TS_MS: usize = 0;
const CHOSEN: usize = 1;
const VALUE_INFO: usize = 2;
const SCENARIO: usize = 3;
const STRATEGY_SET: usize = 4;
const SCENARIO_RAW: usize = 5;
const ROUTE: usize = 6;

/// Which field the solver reads `key` is, if any: by its length and first bytes before the
/// whole of it (the other keys of a record rarely get past the first test).
fn field_of(key: &[u8]) -> Option<usize> {
    let (name, field): (&[u8], usize) = match (key.len(), key.first()?) {
        (5, b't') => (b"ts_ms", TS_MS),
        (6, b'c') => (b"chosen", CHOSEN),
        (10, b'v') => (b"value_info", VALUE_INFO),
        (8, b's') => (b"scenario", SCENARIO),
        (12, b's') if key[1] == b't' => (b"strategy_set", STRATEGY_SET),
        (12, b's') => (b"scenario_raw", SCENARIO_RAW),
        (5, b'r') => (b"route", ROUTE),
        _ => return None,
    };
    (key == name).then_some(field)
}

/// Read `line` (trimmed, not empty); `values` receives `value_info`, `costs` the costs by
/// resource of the entries that have them. `None`: let serde read it.
pub fn parse(
    line: &[u8],
    values: &mut Vec<Value>,
    costs: &mut Vec<ResourceCost>,
) -> Option<Fields> {
    values.clear();
    costs.clear();
    // No backslash (an escape) and no control character (which a string may not hold, and
    // whitespace rarely is) anywhere: then a string ends at the next quote. One pass the
    // compiler vectorizes; a line that has one goes to serde.
    let odd = line
        .iter()
        .fold(false, |odd, &c| odd | (c < 0x20) | (c == b'\\'));
    if odd {
        return None;
    }
    let text = std::str::from_utf8(line).ok()?;
    let mut s = Scanner {
        s: text,
        b: line,
        i: 0,
    };
    let mut f = Fields::default();
    // Which fields were seen: ts_ms, chosen, value_info, scenario, strategy_set, scenario_raw,
    // route.
    let mut seen = [false; 7];
    s.eat(b'{')?;
    loop {
        let key = s.text()?;
        s.eat(b':')?;
        let field = match field_of(&line[key.0..key.1]) {
            Some(TS_MS) => {
                f.ts_ms = s.number()?.parse().ok()?;
                TS_MS
            }
            Some(CHOSEN) => {
                f.chosen = s.text()?;
                CHOSEN
            }
            Some(VALUE_INFO) => {
                s.values(values, costs)?;
                VALUE_INFO
            }
            Some(SCENARIO) => {
                f.scenario = s.optional_string()?;
                SCENARIO
            }
            Some(STRATEGY_SET) => {
                f.strategy_set = s.optional_string()?;
                STRATEGY_SET
            }
            Some(ROUTE) => {
                f.route = s.optional_string()?;
                ROUTE
            }
            Some(_) => {
                // `scenario_raw`: serde reads `null` as absent.
                if s.peek()? == b'n' {
                    s.literal(b"null")?;
                } else {
                    s.skip(1)?;
                    f.scenario_raw = true;
                }
                SCENARIO_RAW
            }
            None => {
                s.skip(1)?;
                usize::MAX
            }
        };
        if let Some(seen) = seen.get_mut(field) {
            if std::mem::replace(seen, true) {
                return None; // a duplicate field: serde refuses it
            }
        }
        if s.end_of(b'}')? {
            break;
        }
    }
    s.ws();
    (s.i == line.len() && seen[0] && seen[1] && seen[2]).then_some(f)
}

#[cfg(test)]
mod tests;
