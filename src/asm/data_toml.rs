//! TOML → [`DataScript`]: the per-transaction values and keys, written by hand.
//!
//! ```toml
//! amount   = 4660                              # integer
//! terminal = { hex = "00 00 00 00 00 01" }     # bytes (spaces allowed)
//! note     = { text = "hello" }                # bytes (UTF-8)
//! now      = 2026-11-23T12:00:00               # local date-time → bcd_datetime
//! later    = { datetime = "2026-11-23T12:00:00" }
//! [keys.dlk]
//! alg   = "des3"                               # des, des3, sm4, m1
//! usage = "load"                               # see below
//! hex   = "3F013F013F013F013F013F013F013F01"
//! ```
//!
//! Key usages: `load`, `purchase`, `tac` (the card's DLK, DPK, DTK); `load-master`,
//! `purchase-master`, `tac-master` (a master says what it is the master of: `divkey` of a
//! `load-master` is a `load` key, and so on); `mac` (a generic MAC key); `enc` (the only
//! usage `enc`/`dec` accept; never a derivation source); `m1-a`, `m1-b` (MIFARE Classic
//! sector keys for `ldrkey`). Session keys (`load-session`, `purchase-session`) are only
//! derived in a transaction, and the old `master`, `session` and `any` are gone.
//!
//! Fields appear in the data script in name order. Errors name the field, its line and
//! column, and what is wrong with it ([`DataError::located`] gives the compiler-style
//! `file:line:col: error: …` line); they never repeat key bytes, nor show a source line
//! (it may hold them). [`compile_data_for`] also checks the fields against a command
//! script's declared inputs: a missing field names the type the script expects, a
//! misspelled one the input it probably means.

use crate::crypto::{KeyAlg, KeyUsage, SecretKey};
use crate::script::{
    DataScript, Decl, Field, FieldValue, MAX_BYTES_LEN, MAX_ENTRIES, is_valid_name,
};
use std::collections::BTreeMap;
use toml::Value;
use toml::value::Datetime;
use zeroize::Zeroize;

/// Why a TOML data script does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The text is not valid TOML.
    #[error("line {line}, column {col}: {message}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// The TOML parser's message.
        message: String,
    },
    /// A field is malformed, or does not fit the command script's inputs.
    #[error("{}field `{field}`: {message}", position(*line, *col))]
    Field {
        /// The field (`amount`, `keys.dlk.hex`, …).
        field: String,
        /// What is wrong (never the key bytes).
        message: String,
        /// 1-based line of the field's name in the TOML (0: no place to point at,
        /// e.g. a missing field).
        line: usize,
        /// 1-based column (0 with line 0).
        col: usize,
    },
}

fn position(line: usize, col: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!("line {line}, column {col}: ")
    }
}

impl DataError {
    /// Where the error is: 1-based line and column, if it points at a place.
    pub fn position(&self) -> Option<(usize, usize)> {
        match *self {
            DataError::Syntax { line, col, .. } | DataError::Field { line, col, .. }
                if line > 0 =>
            {
                Some((line, col))
            }
            _ => None,
        }
    }

    /// The compiler-style one-line diagnostic for the TOML file `file`:
    /// `file:line:col: error: field `amount`: …` (`file: error: …` without a place).
    /// No source line is shown: it may hold key bytes.
    pub fn located(&self, file: &str) -> String {
        let what = match self {
            DataError::Syntax { message, .. } => message.clone(),
            DataError::Field { field, message, .. } => format!("field `{field}`: {message}"),
        };
        match self.position() {
            Some((line, col)) => format!("{file}:{line}:{col}: error: {what}"),
            None => format!("{file}: error: {what}"),
        }
    }
}

fn field_err(field: &str, message: impl Into<String>) -> DataError {
    DataError::Field {
        field: field.into(),
        message: message.into(),
        line: 0,
        col: 0,
    }
}

/// Byte offset of every key's name in the TOML text, by dotted path (`amount`,
/// `keys`, `keys.dlk`, `keys.dlk.hex`): where a field error points. Only names are
/// copied, never values.
fn key_offsets(text: &str) -> BTreeMap<String, usize> {
    fn walk(
        t: &toml::de::DeTable<'_>,
        prefix: &str,
        depth: u32,
        out: &mut BTreeMap<String, usize>,
    ) {
        for (k, v) in t.iter() {
            let path = if prefix.is_empty() {
                String::from(k.get_ref().as_ref())
            } else {
                format!("{prefix}.{}", k.get_ref())
            };
            if let (toml::de::DeValue::Table(inner), true) = (v.get_ref(), depth < 2) {
                walk(inner, &path, depth + 1, out);
            }
            out.entry(path).or_insert(k.span().start);
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(root) = toml::de::DeTable::parse(text) {
        walk(root.get_ref(), "", 0, &mut out);
    }
    out
}

/// Gives a field error the line and column of its field (or of the nearest enclosing
/// table the text names).
fn locate(e: DataError, text: &str) -> DataError {
    match e {
        DataError::Field {
            field,
            message,
            line: 0,
            ..
        } => {
            let offsets = key_offsets(text);
            let mut path = field.as_str();
            let at = loop {
                if let Some(at) = offsets.get(path) {
                    break Some(*at);
                }
                match path.rsplit_once('.') {
                    Some((up, _)) => path = up,
                    None => break None,
                }
            };
            let (line, col) = at.map_or((0, 0), |at| line_col(text, at));
            DataError::Field {
                field,
                message,
                line,
                col,
            }
        }
        other => other,
    }
}

/// Compiles TOML text into a data script for a command script with these declared
/// `inputs`, and checks that every input has a field of its type. A missing field says
/// the type the script declares; a field that is no input but one edit or two from a
/// missing one is named, with the input it probably means (`amonut` → `amount`); a
/// field of another type names both types. Errors carry the field's line and column.
/// Fields no input reads are allowed, as in [`compile_data`].
pub fn compile_data_for(toml_text: &str, inputs: &[Decl]) -> Result<DataScript, DataError> {
    let data = compile_data(toml_text)?;
    let path = |name: &str, v: &FieldValue| match v {
        FieldValue::Key(_) => format!("keys.{name}"),
        _ => String::from(name),
    };
    for decl in inputs {
        match data.fields.iter().find(|f| *f.name == *decl.name) {
            Some(f) if f.value.fits(&decl.ty) => {}
            Some(f) => {
                return Err(locate(
                    field_err(
                        &path(&f.name, &f.value),
                        format!(
                            "is {}, but the script declares `{}: {}`",
                            f.value.type_name(),
                            decl.name,
                            decl.ty
                        ),
                    ),
                    toml_text,
                ));
            }
            None => {
                let strays = data
                    .fields
                    .iter()
                    .filter(|f| !inputs.iter().any(|d| *d.name == *f.name));
                let near = crate::lang::suggest::closest(
                    &decl.name,
                    strays.clone().map(|f| f.name.as_str()),
                );
                let e = match near.and_then(|n| strays.clone().find(|f| f.name == n)) {
                    Some(f) => field_err(
                        &path(&f.name, &f.value),
                        format!(
                            "the script has no input `{}`; did you mean `{}` (declared {})?",
                            f.name, decl.name, decl.ty
                        ),
                    ),
                    None => {
                        let how = match decl.ty {
                            crate::script::ValueType::Key { .. } => format!(
                                " (add a [keys.{}] table with alg, usage and hex)",
                                decl.name
                            ),
                            _ => String::new(),
                        };
                        field_err(
                            &decl.name,
                            format!(
                                "missing: the script declares `{}: {}`{how}",
                                decl.name, decl.ty
                            ),
                        )
                    }
                };
                return Err(locate(e, toml_text));
            }
        }
    }
    Ok(data)
}

/// Zeroizes every string in a TOML value when dropped (key hex strings).
struct Wipe(toml::Table);

fn wipe_value(v: &mut Value) {
    match v {
        Value::String(s) => s.zeroize(),
        Value::Table(t) => t.iter_mut().for_each(|(_, v)| wipe_value(v)),
        Value::Array(a) => a.iter_mut().for_each(wipe_value),
        _ => {}
    }
}

impl Drop for Wipe {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|(_, v)| wipe_value(v));
    }
}

/// Compiles TOML text into a data script. A field error carries the line and column
/// of the field's name.
pub fn compile_data(toml_text: &str) -> Result<DataScript, DataError> {
    compile(toml_text).map_err(|e| locate(e, toml_text))
}

fn compile(toml_text: &str) -> Result<DataScript, DataError> {
    let mut table: toml::Table = toml::from_str(toml_text).map_err(|e| {
        let (line, col) = e
            .span()
            .map(|s| line_col(toml_text, s.start))
            .unwrap_or((0, 0));
        DataError::Syntax {
            line,
            col,
            message: String::from(e.message().trim()),
        }
    })?;
    let keys = match table.remove("keys") {
        None => Wipe(toml::Table::new()),
        Some(Value::Table(t)) => Wipe(t),
        Some(_) => return Err(field_err("keys", "must be a table of [keys.NAME] tables")),
    };
    let mut fields = Vec::new();
    for (name, value) in &table {
        check_name(name)?;
        fields.push(Field {
            name: name.clone(),
            value: value_of(name, value)?,
        });
    }
    let mut keys = keys;
    for (name, spec) in keys.0.iter_mut() {
        let field = format!("keys.{name}");
        check_name(name).map_err(|_| {
            field_err(
                &field,
                "a name is a letter or `_` then letters, digits or `_` (at most 32)",
            )
        })?;
        if table.contains_key(name) {
            return Err(field_err(&field, format!("`{name}` is also a plain field")));
        }
        let Value::Table(spec) = spec else {
            return Err(field_err(&field, "must be a table with alg, usage and hex"));
        };
        fields.push(Field {
            name: name.clone(),
            value: FieldValue::Key(key_of(&field, spec)?),
        });
    }
    if fields.len() > MAX_ENTRIES {
        return Err(field_err("", format!("more than {MAX_ENTRIES} fields")));
    }
    fields.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(DataScript { fields })
}

fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn check_name(name: &str) -> Result<(), DataError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(field_err(
            name,
            "a name is a letter or `_` then letters, digits or `_` (at most 32)",
        ))
    }
}

const VALUE_FORMS: &str =
    "use an integer, { hex = \"..\" }, { text = \"..\" }, a date-time or { datetime = \"..\" }";

fn value_of(name: &str, v: &Value) -> Result<FieldValue, DataError> {
    match v {
        Value::Integer(i) => u64::try_from(*i)
            .map(FieldValue::Int)
            .map_err(|_| field_err(name, "integers must not be negative")),
        Value::Datetime(d) => bcd_of(name, d).map(FieldValue::BcdDateTime),
        Value::Table(t) => {
            let mut it = t.iter();
            let (Some((form, inner)), None) = (it.next(), it.next()) else {
                return Err(field_err(
                    name,
                    format!("expected exactly one of hex, text, datetime ({VALUE_FORMS})"),
                ));
            };
            let Value::String(s) = inner else {
                return Err(field_err(name, format!("`{form}` must be a string")));
            };
            let bytes = match form.as_str() {
                "hex" => hex(s).map_err(|m| field_err(name, m))?,
                "text" => s.as_bytes().to_vec(),
                "datetime" => {
                    let d: Datetime = s
                        .parse()
                        .map_err(|_| field_err(name, "not a date-time like 2026-11-23T12:00:00"))?;
                    return bcd_of(name, &d).map(FieldValue::BcdDateTime);
                }
                other => {
                    return Err(field_err(
                        name,
                        format!("unknown form `{other}` ({VALUE_FORMS})"),
                    ));
                }
            };
            if bytes.len() > MAX_BYTES_LEN {
                return Err(field_err(
                    name,
                    format!("{} bytes exceeds the limit {MAX_BYTES_LEN}", bytes.len()),
                ));
            }
            Ok(FieldValue::Bytes(bytes))
        }
        Value::String(_) => Err(field_err(
            name,
            format!("a plain string is ambiguous: {VALUE_FORMS}"),
        )),
        _ => Err(field_err(name, format!("unsupported value: {VALUE_FORMS}"))),
    }
}

fn bcd(v: u32) -> u8 {
    (((v / 10 % 10) << 4) | (v % 10)) as u8
}

fn bcd_of(name: &str, d: &Datetime) -> Result<[u8; 7], DataError> {
    let (Some(date), Some(time), None) = (d.date, d.time, d.offset) else {
        return Err(field_err(
            name,
            "needs a local date and time without offset, like 2026-11-23T12:00:00",
        ));
    };
    if time.nanosecond.is_some_and(|n| n != 0) {
        return Err(field_err(name, "fractional seconds are not supported"));
    }
    if date.year > 9999 {
        return Err(field_err(name, "the year must have four digits"));
    }
    let y = u32::from(date.year);
    Ok([
        bcd(y / 100),
        bcd(y % 100),
        bcd(date.month.into()),
        bcd(date.day.into()),
        bcd(time.hour.into()),
        bcd(time.minute.into()),
        bcd(time.second.unwrap_or(0).into()),
    ])
}

/// Hex digits, spaces allowed between them. Messages never include the digits.
fn hex(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len() / 2);
    let mut hi: Option<u8> = None;
    for (i, c) in s.chars().filter(|c| !c.is_whitespace()).enumerate() {
        let Some(d) = c.to_digit(16) else {
            out.zeroize();
            return Err(format!("not hex: character {} is not a hex digit", i + 1));
        };
        match hi.take() {
            None => hi = Some(d as u8),
            Some(h) => out.push(h << 4 | d as u8),
        }
    }
    if hi.is_some() {
        out.zeroize();
        return Err(String::from("not hex: odd number of digits"));
    }
    Ok(out)
}

fn key_of(field: &str, spec: &mut toml::Table) -> Result<SecretKey, DataError> {
    for k in spec.keys() {
        if !matches!(k.as_str(), "alg" | "usage" | "hex") {
            return Err(field_err(
                &format!("{field}.{k}"),
                "unknown key property (alg, usage, hex)",
            ));
        }
    }
    let text = |spec: &toml::Table, prop: &str| -> Result<String, DataError> {
        match spec.get(prop) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(field_err(&format!("{field}.{prop}"), "must be a string")),
            None => Err(field_err(&format!("{field}.{prop}"), "missing")),
        }
    };
    let alg_name = text(spec, "alg")?;
    let alg = KeyAlg::from_name(&alg_name).ok_or_else(|| {
        field_err(
            &format!("{field}.alg"),
            format!("unknown algorithm `{alg_name}` (des, des3, sm4, m1)"),
        )
    })?;
    let usage_name = text(spec, "usage")?;
    let usage_field = format!("{field}.usage");
    let usage = match KeyUsage::from_name(&usage_name) {
        Some(u) if u.is_declarable() => u,
        Some(_) => {
            return Err(field_err(
                &usage_field,
                format!("`{usage_name}` keys are only derived in a transaction (by pkey)"),
            ));
        }
        None if matches!(usage_name.as_str(), "master" | "session" | "any") => {
            return Err(field_err(
                &usage_field,
                format!(
                    "`{usage_name}` is no longer a usage: a master says what it is the master of \
                     (load-master, purchase-master, tac-master), and no key may do everything"
                ),
            ));
        }
        None => {
            let all: Vec<&str> = KeyUsage::ALL
                .iter()
                .filter(|u| u.is_declarable())
                .map(|u| u.name())
                .collect();
            return Err(field_err(
                &usage_field,
                format!("unknown usage `{usage_name}` ({})", all.join(", ")),
            ));
        }
    };
    let hex_field = format!("{field}.hex");
    let mut digits = match spec.remove("hex") {
        Some(Value::String(s)) => s,
        Some(mut other) => {
            wipe_value(&mut other);
            return Err(field_err(&hex_field, "must be a string of hex digits"));
        }
        None => return Err(field_err(&hex_field, "missing")),
    };
    let parsed = hex(&digits);
    digits.zeroize();
    let mut bytes = parsed.map_err(|m| field_err(&hex_field, m))?;
    let key = SecretKey::new(alg, usage, &bytes).map_err(|_| {
        field_err(
            &hex_field,
            format!(
                "a {} key is {} bytes, found {}",
                alg.name(),
                alg.key_len(),
                bytes.len()
            ),
        )
    });
    bytes.zeroize();
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::ValueType;

    const LOAD: &str = r#"
amount   = 4660
terminal = { hex = "00 00 00 00 00 01" }
note     = { text = "hello" }
now      = 2026-11-23T12:00:00
later    = { datetime = "2026-11-23T12:00:07" }
[keys.dlk]
alg   = "des3"
usage = "load"
hex   = "3F013F013F013F013F013F013F013F01"
"#;

    #[test]
    fn compiles_every_form() {
        let d = compile_data(LOAD).unwrap();
        let names: Vec<&str> = d.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["amount", "dlk", "later", "note", "now", "terminal"]);
        assert_eq!(d.get("amount"), Some(&FieldValue::Int(0x1234)));
        assert_eq!(
            d.get("terminal"),
            Some(&FieldValue::Bytes(vec![0, 0, 0, 0, 0, 1]))
        );
        assert_eq!(d.get("note"), Some(&FieldValue::Bytes(b"hello".to_vec())));
        assert_eq!(
            d.get("now"),
            Some(&FieldValue::BcdDateTime([
                0x20, 0x26, 0x11, 0x23, 0x12, 0x00, 0x00
            ]))
        );
        assert_eq!(
            d.get("later"),
            Some(&FieldValue::BcdDateTime([
                0x20, 0x26, 0x11, 0x23, 0x12, 0x00, 0x07
            ]))
        );
        let want = SecretKey::new(KeyAlg::Des3, KeyUsage::Load, &[0x3F, 0x01].repeat(8)).unwrap();
        assert_eq!(d.get("dlk"), Some(&FieldValue::Key(want)));
        assert!(d.get("dlk").unwrap().fits(&ValueType::Key {
            alg: KeyAlg::Des3,
            usage: KeyUsage::Load
        }));
        // The binary form round-trips (BCD validity is checked by the parser).
        assert_eq!(DataScript::parse(&d.encode()).unwrap(), d);
    }

    #[test]
    fn masters_say_what_they_are_masters_of() {
        for (name, usage) in [
            ("load-master", KeyUsage::LoadMaster),
            ("purchase-master", KeyUsage::PurchaseMaster),
            ("tac-master", KeyUsage::TacMaster),
        ] {
            let text = format!(
                "[keys.mk]\nalg = \"sm4\"\nusage = \"{name}\"\nhex = \"{}\"",
                "11".repeat(16)
            );
            let d = compile_data(&text).unwrap();
            let Some(FieldValue::Key(k)) = d.get("mk") else {
                panic!("{d:?}")
            };
            assert_eq!(k.usage(), usage);
        }
    }

    fn field_error(text: &str) -> (String, String) {
        match compile_data(text).unwrap_err() {
            DataError::Field { field, message, .. } => (field, message),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("a = -1", "a", "negative"),
            ("a = 1.5", "a", "unsupported"),
            ("a = \"x\"", "a", "ambiguous"),
            ("a = { hex = \"0G\" }", "a", "not a hex digit"),
            ("a = { hex = \"012\" }", "a", "odd"),
            ("a = { hex = 5 }", "a", "must be a string"),
            ("a = { bin = \"01\" }", "a", "unknown form"),
            ("a = { hex = \"01\", text = \"x\" }", "a", "exactly one"),
            ("a = 2026-11-23", "a", "local date and time"),
            ("a = 2026-11-23T12:00:00Z", "a", "local date and time"),
            ("a = 2026-11-23T12:00:00.5", "a", "fractional"),
            ("a = { datetime = \"tomorrow\" }", "a", "not a date-time"),
            ("\"9a\" = 1", "9a", "a name is"),
            ("keys = 1", "keys", "table"),
            ("[keys]\nk = 1", "keys.k", "alg, usage and hex"),
            (
                "[keys.k]\nusage = \"load\"\nhex = \"00\"",
                "keys.k.alg",
                "missing",
            ),
            (
                "[keys.k]\nalg = \"rsa\"\nusage = \"load\"\nhex = \"00\"",
                "keys.k.alg",
                "unknown algorithm",
            ),
            (
                "[keys.k]\nalg = \"des\"\nusage = \"x\"\nhex = \"00\"",
                "keys.k.usage",
                "unknown usage",
            ),
            (
                "[keys.k]\nalg = \"des3\"\nusage = \"master\"\nhex = \"00\"",
                "keys.k.usage",
                "load-master, purchase-master, tac-master",
            ),
            (
                "[keys.k]\nalg = \"des3\"\nusage = \"any\"\nhex = \"00\"",
                "keys.k.usage",
                "no longer a usage",
            ),
            (
                "[keys.k]\nalg = \"des\"\nusage = \"load-session\"\nhex = \"00\"",
                "keys.k.usage",
                "only derived",
            ),
            (
                "[keys.k]\nalg = \"des\"\nusage = 1\nhex = \"00\"",
                "keys.k.usage",
                "must be a string",
            ),
            (
                "[keys.k]\nalg = \"des\"\nusage = \"mac\"",
                "keys.k.hex",
                "missing",
            ),
            (
                "[keys.k]\nalg = \"des\"\nusage = \"mac\"\nhex = 7",
                "keys.k.hex",
                "must be a string",
            ),
            (
                "[keys.k]\nalg = \"des\"\nusage = \"mac\"\nhex = \"00\"\nx = 1",
                "keys.k.x",
                "unknown key property",
            ),
            (
                "[keys.k]\nalg = \"des\"\nusage = \"mac\"\nhex = \"0011\"",
                "keys.k.hex",
                "8 bytes, found 2",
            ),
            (
                "k = 1\n[keys.k]\nalg = \"des\"\nusage = \"mac\"\nhex = \"0011223344556677\"",
                "keys.k",
                "also a plain field",
            ),
        ];
        for (text, field, msg) in cases {
            let (f, m) = field_error(text);
            assert_eq!(&f, field, "{text}");
            assert!(m.contains(msg), "{text}: {m}");
        }
        let big = format!("a = {{ hex = \"{}\" }}", "00".repeat(MAX_BYTES_LEN + 1));
        assert!(field_error(&big).1.contains("exceeds"));
    }

    #[test]
    fn errors_never_echo_key_bytes() {
        let texts = [
            "[keys.k]\nalg = \"des3\"\nusage = \"load\"\nhex = \"3F013F013F013F013F013F013F01ZZ\"",
            "[keys.k]\nalg = \"des3\"\nusage = \"load\"\nhex = \"3F013F013F013F01\"",
            "[keys.k]\nalg = \"des3\"\nusage = \"load\"\nhex = 3F013F013F013F01",
            "[keys.k]\nalg = \"des3\"\nusage = \"load\"\nhex = \"3F013F013F013F01",
        ];
        for t in texts {
            let e = compile_data(t).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("3F01"), "{shown}");
        }
    }

    /// Field errors point at the field's name: `file:line:col`, never the line itself
    /// (it may hold key bytes).
    #[test]
    fn field_errors_have_a_position() {
        let text = "amount = 5\nterminal = { hex = \"0G\" }\n";
        let e = compile_data(text).unwrap_err();
        assert_eq!(e.position(), Some((2, 1)), "{e:?}");
        assert_eq!(
            e.located("load.toml"),
            "load.toml:2:1: error: field `terminal`: not hex: character 2 is not a hex digit"
        );
        assert_eq!(
            e.to_string(),
            "line 2, column 1: field `terminal`: not hex: character 2 is not a hex digit"
        );
        let text = "a = 1\n\n[keys.dlk]\nalg = \"des3\"\nusage = \"load\"\nhex = \"3F013F01\"\n";
        let e = compile_data(text).unwrap_err();
        assert_eq!(e.position(), Some((6, 1)), "{e:?}");
        assert!(!e.located("x.toml").contains("3F01"));
        let e = compile_data("[keys.k]\nusage = \"load\"\nhex = \"00\"").unwrap_err();
        // A missing property points at its table.
        assert_eq!(e.position(), Some((1, 7)), "{e:?}");
        let e = compile_data("a = 1\nb = = 2").unwrap_err();
        assert!(e.located("d.toml").starts_with("d.toml:2:"), "{e}");
    }

    /// Against the command script's inputs: a misspelled field is named with the input
    /// it probably means, a missing one with the type the script declares, a field of
    /// another type with both types — each at its line and column.
    #[test]
    fn fields_are_checked_against_the_inputs() {
        let decl = |name: &str, ty: ValueType| Decl {
            name: name.into(),
            ty,
        };
        let inputs = [
            decl("amount", ValueType::Int { bits: 32 }),
            decl(
                "dlk",
                ValueType::Key {
                    alg: KeyAlg::Des3,
                    usage: KeyUsage::Load,
                },
            ),
        ];
        let key = |usage: &str| {
            format!(
                "[keys.dlk]\nalg = \"des3\"\nusage = \"{usage}\"\nhex = \"{}\"\n",
                "11".repeat(16)
            )
        };
        assert!(
            compile_data_for(&format!("amount = 5\nextra = 1\n{}", key("load")), &inputs).is_ok()
        );
        let e = compile_data_for(&format!("note = 1\namonut = 5\n{}", key("load")), &inputs)
            .unwrap_err();
        assert_eq!(
            e.located("load.toml"),
            "load.toml:2:1: error: field `amonut`: the script has no input `amonut`; did you mean `amount` (declared u32)?"
        );
        let e = compile_data_for(&format!("note = 1\n{}", key("load")), &inputs).unwrap_err();
        assert_eq!(
            e.located("load.toml"),
            "load.toml: error: field `amount`: missing: the script declares `amount: u32`"
        );
        let e = compile_data_for("amount = 5\n", &inputs).unwrap_err();
        assert!(
            e.to_string().ends_with(
                "missing: the script declares `dlk: key(des3, load)` (add a [keys.dlk] table with alg, usage and hex)"
            ),
            "{e}"
        );
        let e =
            compile_data_for(&format!("amount = 5\n\n{}", key("purchase")), &inputs).unwrap_err();
        assert_eq!(
            e.located("load.toml"),
            "load.toml:3:7: error: field `keys.dlk`: is key(des3, purchase), but the script declares `dlk: key(des3, load)`"
        );
        assert!(!format!("{e:?}").contains("1111"));
        let e = compile_data_for(
            &format!("amount = {{ hex = \"05\" }}\n{}", key("load")),
            &inputs,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("line 1, column 1: field `amount`: is bytes[1], but the script declares `amount: u32`"), "{e}");
    }

    #[test]
    fn syntax_errors_have_a_position() {
        match compile_data("a = 1\nb = = 2").unwrap_err() {
            DataError::Syntax { line, col, .. } => assert_eq!((line, col > 0), (2, true)),
            e => panic!("{e:?}"),
        }
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
