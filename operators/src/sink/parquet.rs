//! A small columnar table and its Parquet encoding (one row group, Snappy-compressed, every column
//! optional), for dataset metadata that pandas / polars / DuckDB read directly.

use parquet::basic::{Compression, ConvertedType, Repetition, Type as PhysicalType};
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;
use std::sync::Arc;

/// One column's values; `None` is a null.
#[derive(Clone, Debug, PartialEq)]
pub enum Column {
    Str(Vec<Option<String>>),
    F64(Vec<Option<f64>>),
    I64(Vec<Option<i64>>),
}

impl Column {
    fn len(&self) -> usize {
        match self {
            Column::Str(v) => v.len(),
            Column::F64(v) => v.len(),
            Column::I64(v) => v.len(),
        }
    }
}

/// Named columns of equal length.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    pub columns: Vec<(String, Column)>,
}

fn split<T: Clone>(values: &[Option<T>]) -> (Vec<T>, Vec<i16>) {
    let def = values.iter().map(|v| i16::from(v.is_some())).collect();
    (values.iter().flatten().cloned().collect(), def)
}

impl Table {
    /// Encode as a Parquet file.
    pub fn to_parquet(&self) -> Result<Vec<u8>, parquet::errors::ParquetError> {
        let rows = self.columns.first().map(|(_, c)| c.len()).unwrap_or(0);
        if let Some((name, _)) = self.columns.iter().find(|(_, c)| c.len() != rows) {
            return Err(parquet::errors::ParquetError::General(format!("column `{name}` has a different length")));
        }
        let mut fields = Vec::new();
        for (name, col) in &self.columns {
            let builder = match col {
                Column::Str(_) => Type::primitive_type_builder(name, PhysicalType::BYTE_ARRAY)
                    .with_converted_type(ConvertedType::UTF8),
                Column::F64(_) => Type::primitive_type_builder(name, PhysicalType::DOUBLE),
                Column::I64(_) => Type::primitive_type_builder(name, PhysicalType::INT64),
            };
            fields.push(Arc::new(builder.with_repetition(Repetition::OPTIONAL).build()?));
        }
        let schema = Arc::new(Type::group_type_builder("schema").with_fields(fields).build()?);
        let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
        let mut out = Vec::new();
        let mut writer = SerializedFileWriter::new(&mut out, schema, props)?;
        let mut group = writer.next_row_group()?;
        for (_, col) in &self.columns {
            let Some(mut cw) = group.next_column()? else { break };
            match col {
                Column::Str(v) => {
                    let (vals, def) = split(v);
                    let vals: Vec<ByteArray> = vals.into_iter().map(|s| ByteArray::from(s.into_bytes())).collect();
                    cw.typed::<ByteArrayType>().write_batch(&vals, Some(&def), None)?;
                }
                Column::F64(v) => {
                    let (vals, def) = split(v);
                    cw.typed::<DoubleType>().write_batch(&vals, Some(&def), None)?;
                }
                Column::I64(v) => {
                    let (vals, def) = split(v);
                    cw.typed::<Int64Type>().write_batch(&vals, Some(&def), None)?;
                }
            }
            cw.close()?;
        }
        group.close()?;
        writer.close()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    #[test]
    fn writes_a_readable_file_with_nulls() {
        let t = Table {
            columns: vec![
                ("id".into(), Column::Str(vec![Some("a".into()), Some("b".into()), None])),
                ("score".into(), Column::F64(vec![Some(1.5), None, Some(-2.0)])),
                ("n".into(), Column::I64(vec![Some(7), Some(8), None])),
            ],
        };
        let bytes = t.to_parquet().unwrap();
        assert_eq!(&bytes[..4], b"PAR1");
        let f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut &f, &bytes).unwrap();
        let reader = SerializedFileReader::new(f).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 3);
        let rows: Vec<String> = reader.get_row_iter(None).unwrap().map(|r| r.unwrap().to_string()).collect();
        assert_eq!(rows[0], "{id: \"a\", score: 1.5, n: 7}");
        assert_eq!(rows[2], "{id: null, score: -2E0, n: null}");
        let bad = Table { columns: vec![("a".into(), Column::I64(vec![Some(1)])), ("b".into(), Column::I64(vec![]))] };
        assert!(bad.to_parquet().is_err());
    }
}
