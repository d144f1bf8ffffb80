//! Results as a table of typed, nullable columns, written and read as CSV or Parquet
//! (chosen by the file's extension): the chunks archive scoring appends and the file
//! `allconv merge` writes. Parquet through the `parquet` crate's low-level writer and
//! record reader (no Arrow); strings are UTF-8 (`STRING` logical type), missing values
//! are nulls, so pandas, polars, DuckDB and Spark open the files as they are.

use super::Res;
use std::path::Path;

/// A column's values; `None` is a null (an empty CSV field).
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f32>>),
    Str(Vec<Option<String>>),
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Values::Int(v) => v.len(),
            Values::Float(v) => v.len(),
            Values::Str(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether value `i` is not null.
    pub fn present(&self, i: usize) -> bool {
        match self {
            Values::Int(v) => v[i].is_some(),
            Values::Float(v) => v[i].is_some(),
            Values::Str(v) => v[i].is_some(),
        }
    }

    /// `n` nulls of the same type.
    fn nulls_like(&self, n: usize) -> Values {
        match self {
            Values::Int(_) => Values::Int(vec![None; n]),
            Values::Float(_) => Values::Float(vec![None; n]),
            Values::Str(_) => Values::Str(vec![None; n]),
        }
    }

    fn append(&mut self, other: Values) -> Res<()> {
        match (self, other) {
            (Values::Int(a), Values::Int(b)) => a.extend(b),
            (Values::Float(a), Values::Float(b)) => a.extend(b),
            (Values::Str(a), Values::Str(b)) => a.extend(b),
            _ => return Err("columns of different types".into()),
        }
        Ok(())
    }

    /// Values in the order `order` gives.
    fn take(&self, order: &[usize]) -> Values {
        match self {
            Values::Int(v) => Values::Int(order.iter().map(|&i| v[i]).collect()),
            Values::Float(v) => Values::Float(order.iter().map(|&i| v[i]).collect()),
            Values::Str(v) => Values::Str(order.iter().map(|&i| v[i].clone()).collect()),
        }
    }
}

/// `p<k>` -> (k, false), `p<k>_single` -> (k, true): the probability columns of the results.
pub fn probability_column(name: &str) -> Option<(usize, bool)> {
    let rest = name.strip_prefix('p')?;
    let (digits, single) = match rest.strip_suffix("_single") {
        Some(d) => (d, true),
        None => (rest, false),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, single))
}

/// The type of a column by its name, for CSV (which does not record types): `row` and
/// `input_h`/`input_w` are integers, `p<k>` and `p<k>_single` are probabilities, all else
/// is text.
pub fn csv_type_of(name: &str) -> Values {
    match name {
        "row" | "input_h" | "input_w" => Values::Int(Vec::new()),
        _ if probability_column(name).is_some() => Values::Float(Vec::new()),
        _ => Values::Str(Vec::new()),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub values: Values,
}

/// Named columns of equal length.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub columns: Vec<Column>,
}

impl Table {
    pub fn rows(&self) -> usize {
        self.columns.first().map_or(0, |c| c.values.len())
    }

    pub fn column(&self, name: &str) -> Option<&Values> {
        self.columns
            .iter()
            .find(|c| c.name == name)
            .map(|c| &c.values)
    }

    /// `other`'s rows after these; columns matched by name, a column one side lacks is
    /// null there (chunks written before the class count was known have no `p<k>`).
    pub fn append(&mut self, other: Table) -> Res<()> {
        let (n, m) = (self.rows(), other.rows());
        let mut seen = vec![false; self.columns.len()];
        for c in other.columns {
            match self.columns.iter().position(|x| x.name == c.name) {
                Some(i) => {
                    let name = c.name.clone();
                    self.columns[i]
                        .values
                        .append(c.values)
                        .map_err(|e| format!("column {name}: {e}"))?;
                    seen[i] = true;
                }
                None => {
                    let mut values = c.values.nulls_like(n);
                    values.append(c.values)?;
                    self.columns.push(Column {
                        name: c.name,
                        values,
                    });
                }
            }
        }
        for (c, seen) in self.columns.iter_mut().zip(seen) {
            if !seen {
                let nulls = c.values.nulls_like(m);
                c.values.append(nulls)?;
            }
        }
        Ok(())
    }

    /// The rows reordered: row `k` of the result is row `order[k]` of this table.
    pub fn take(&self, order: &[usize]) -> Table {
        Table {
            columns: self
                .columns
                .iter()
                .map(|c| Column {
                    name: c.name.clone(),
                    values: c.values.take(order),
                })
                .collect(),
        }
    }

    /// Probability columns `p0, p1, ...` in class order after the other columns (a
    /// merge's union puts a later chunk's extra classes at the end).
    pub fn order_columns(&mut self) {
        let key = |name: &str| match probability_column(name) {
            Some((k, single)) => (1, usize::from(single), k),
            None => (0, 0, 0),
        };
        self.columns.sort_by_key(|c| key(&c.name));
    }
}

/// CSV or Parquet by the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Parquet,
}

impl Format {
    /// The chunks' format when none is asked for: Parquet where this build writes it.
    pub const DEFAULT: Format = if cfg!(feature = "parquet") {
        Format::Parquet
    } else {
        Format::Csv
    };

    pub fn of(path: &Path) -> Res<Format> {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("csv") => Ok(Format::Csv),
            Some(e) if e.eq_ignore_ascii_case("parquet") => Ok(Format::Parquet),
            _ => Err(format!(
                "{}: the output format is chosen by the extension: .parquet or .csv",
                path.display()
            )),
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }
}

/// `t` written whole to `path` (temp file, then rename), as its extension says.
pub fn write_table(path: &Path, t: &Table) -> Res<()> {
    let bytes = match Format::of(path)? {
        Format::Csv => csv_bytes(t),
        #[cfg(feature = "parquet")]
        Format::Parquet => parquet_bytes(t),
        #[cfg(not(feature = "parquet"))]
        Format::Parquet => Err(NO_PARQUET.into()),
    }
    .map_err(|e| format!("{}: {e}", path.display()))?;
    crate::files::write_atomic(path, &bytes).map_err(|e| e.to_string())
}

/// A table read back from a CSV or Parquet file written by [`write_table`] (or by another
/// tool with the same column names and types).
pub fn read_table(path: &Path) -> Res<Table> {
    let r = match Format::of(path)? {
        Format::Csv => read_csv(path),
        #[cfg(feature = "parquet")]
        Format::Parquet => read_parquet(path),
        #[cfg(not(feature = "parquet"))]
        Format::Parquet => Err(NO_PARQUET.to_string()),
    };
    r.map_err(|e| format!("{}: {e}", path.display()))
}

fn csv_bytes(t: &Table) -> Res<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let e = |e: csv::Error| e.to_string();
    w.write_record(t.columns.iter().map(|c| c.name.as_str()))
        .map_err(e)?;
    for i in 0..t.rows() {
        let fields: Vec<String> = t
            .columns
            .iter()
            .map(|c| match &c.values {
                Values::Int(v) => v[i].map(|x| x.to_string()).unwrap_or_default(),
                Values::Float(v) => v[i].map(float_text).unwrap_or_default(),
                Values::Str(v) => v[i].clone().unwrap_or_default(),
            })
            .collect();
        w.write_record(&fields).map_err(e)?;
    }
    w.into_inner().map_err(|e| e.to_string())
}

/// The shortest decimal that reads back as the same f32 (Rust's `{}` and `{:e}` both are),
/// in exponent form for magnitudes below 1e-4 (a softmax's far tail) or above 1e7.
pub fn float_text(x: f32) -> String {
    let a = x.abs();
    if a != 0.0 && a.is_finite() && !(1e-4..1e7).contains(&a) {
        format!("{x:e}")
    } else {
        x.to_string()
    }
}

fn read_csv(path: &Path) -> Res<Table> {
    let mut r = csv::ReaderBuilder::new()
        .from_path(path)
        .map_err(|e| e.to_string())?;
    let headers = r.headers().map_err(|e| e.to_string())?.clone();
    let mut columns: Vec<Column> = headers
        .iter()
        .map(|h| Column {
            name: h.to_string(),
            values: csv_type_of(h),
        })
        .collect();
    let mut problems = Vec::new();
    for (n, rec) in r.records().enumerate() {
        let rec = rec.map_err(|e| e.to_string())?;
        let line = n + 2;
        for (c, field) in columns.iter_mut().zip(rec.iter()) {
            let empty = field.is_empty();
            match &mut c.values {
                Values::Str(v) => v.push((!empty).then(|| field.to_string())),
                Values::Int(v) => v.push(match field.parse::<i64>() {
                    Ok(x) => Some(x),
                    Err(_) if empty => None,
                    Err(_) => {
                        problems.push(format!(
                            "line {line}, {}: {field:?} is not an integer",
                            c.name
                        ));
                        None
                    }
                }),
                Values::Float(v) => v.push(match field.parse::<f32>() {
                    Ok(x) => Some(x),
                    Err(_) if empty => None,
                    Err(_) => {
                        problems.push(format!(
                            "line {line}, {}: {field:?} is not a number",
                            c.name
                        ));
                        None
                    }
                }),
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(Table { columns })
}

#[cfg(not(feature = "parquet"))]
const NO_PARQUET: &str = "Parquet is read and written by the full build (the `parquet` feature); this build writes CSV: --format csv, or merge -o scores.csv";

#[cfg(feature = "parquet")]
fn parquet_bytes(t: &Table) -> Res<Vec<u8>> {
    use parquet::basic::{Compression, LogicalType, Repetition, Type as Physical};
    use parquet::data_type::{ByteArray, ByteArrayType, FloatType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::types::Type;
    use std::sync::Arc;
    let e = |e: parquet::errors::ParquetError| e.to_string();
    let fields = t
        .columns
        .iter()
        .map(|c| {
            let (physical, logical) = match c.values {
                Values::Int(_) => (Physical::INT64, None),
                Values::Float(_) => (Physical::FLOAT, None),
                Values::Str(_) => (Physical::BYTE_ARRAY, Some(LogicalType::String)),
            };
            Type::primitive_type_builder(&c.name, physical)
                .with_repetition(Repetition::OPTIONAL)
                .with_logical_type(logical)
                .build()
                .map(Arc::new)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(e)?;
    let schema = Type::group_type_builder("scores")
        .with_fields(fields)
        .build()
        .map_err(e)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut out = Vec::new();
    let mut w =
        SerializedFileWriter::new(&mut out, Arc::new(schema), Arc::new(props)).map_err(e)?;
    let mut g = w.next_row_group().map_err(e)?;
    for c in &t.columns {
        let mut col = g
            .next_column()
            .map_err(e)?
            .ok_or("internal: fewer parquet columns than the schema")?;
        let defs: Vec<i16> = (0..c.values.len())
            .map(|i| i16::from(c.values.present(i)))
            .collect();
        let w = &mut col;
        match &c.values {
            Values::Int(v) => {
                put::<Int64Type>(w, &v.iter().flatten().copied().collect::<Vec<_>>(), &defs)
            }
            Values::Float(v) => {
                put::<FloatType>(w, &v.iter().flatten().copied().collect::<Vec<_>>(), &defs)
            }
            Values::Str(v) => {
                let vals: Vec<ByteArray> = v
                    .iter()
                    .flatten()
                    .map(|s| ByteArray::from(s.as_str()))
                    .collect();
                put::<ByteArrayType>(w, &vals, &defs)
            }
        }
        .map_err(e)?;
        col.close().map_err(e)?;
    }
    g.close().map_err(e)?;
    w.close().map_err(e)?;
    Ok(out)
}

/// One nullable column's present values and definition levels (1 present, 0 null).
#[cfg(feature = "parquet")]
fn put<T: parquet::data_type::DataType>(
    col: &mut parquet::file::writer::SerializedColumnWriter<'_>,
    values: &[T::T],
    defs: &[i16],
) -> parquet::errors::Result<usize> {
    col.typed::<T>().write_batch(values, Some(defs), None)
}

#[cfg(feature = "parquet")]
fn read_parquet(path: &Path) -> Res<Table> {
    use parquet::basic::Type as Physical;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let e = |e: parquet::errors::ParquetError| e.to_string();
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let reader = SerializedFileReader::new(file).map_err(e)?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let mut columns: Vec<Column> = schema
        .columns()
        .iter()
        .map(|c| {
            let values = match c.physical_type() {
                Physical::INT64 | Physical::INT32 => Values::Int(Vec::new()),
                Physical::FLOAT | Physical::DOUBLE => Values::Float(Vec::new()),
                _ => Values::Str(Vec::new()),
            };
            Column {
                name: c.name().to_string(),
                values,
            }
        })
        .collect();
    for row in reader.into_iter() {
        let row = row.map_err(e)?;
        let fields = row.into_columns();
        if fields.len() != columns.len() {
            return Err("a row with another number of columns than the schema".into());
        }
        for (c, (_, f)) in columns.iter_mut().zip(fields) {
            let name = &c.name;
            match (&mut c.values, f) {
                (Values::Int(v), Field::Long(x)) => v.push(Some(x)),
                (Values::Int(v), Field::Int(x)) => v.push(Some(x.into())),
                (Values::Float(v), Field::Float(x)) => v.push(Some(x)),
                (Values::Float(v), Field::Double(x)) => v.push(Some(x as f32)),
                (Values::Str(v), Field::Str(s)) => v.push(Some(s)),
                (Values::Int(v), Field::Null) => v.push(None),
                (Values::Float(v), Field::Null) => v.push(None),
                (Values::Str(v), Field::Null) => v.push(None),
                (_, f) => return Err(format!("column {name}: unexpected value {f}")),
            }
        }
    }
    Ok(Table { columns })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        Table {
            columns: vec![
                Column {
                    name: "row".into(),
                    values: Values::Int(vec![Some(0), Some(1), Some(2)]),
                },
                Column {
                    name: "path".into(),
                    values: Values::Str(vec![
                        Some("a, \"b\".png".into()),
                        Some("ü.dcm".into()),
                        None,
                    ]),
                },
                Column {
                    name: "p0".into(),
                    values: Values::Float(vec![Some(0.1), None, Some(2.3249755e-26)]),
                },
            ],
        }
    }

    #[test]
    fn csv_and_parquet_read_back_what_was_written() {
        let dir = std::env::temp_dir().join(format!("allconv-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exts: &[&str] = if cfg!(feature = "parquet") {
            &["csv", "parquet"]
        } else {
            &["csv"]
        };
        for ext in exts {
            let p = dir.join(format!("t.{ext}"));
            write_table(&p, &sample()).unwrap();
            let back = read_table(&p).unwrap();
            // CSV cannot tell an empty string from a null: the sample has only nulls.
            assert_eq!(back, sample(), "{ext}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn append_fills_missing_columns_with_nulls() {
        let mut a = sample();
        let b = Table {
            columns: vec![
                Column {
                    name: "row".into(),
                    values: Values::Int(vec![Some(3)]),
                },
                Column {
                    name: "p1".into(),
                    values: Values::Float(vec![Some(0.5)]),
                },
            ],
        };
        a.append(b).unwrap();
        assert_eq!(a.rows(), 4);
        assert_eq!(
            a.column("p1"),
            Some(&Values::Float(vec![None, None, None, Some(0.5)]))
        );
        assert_eq!(
            a.column("path").map(|v| v.len()),
            Some(4),
            "a column the second table lacks is padded"
        );
    }
}
