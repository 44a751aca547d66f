//! Shards of a source: together they read every row exactly once, each computes its part alone,
//! and the row map `plan --shards` uses agrees with what each shard reads.

use super::*;
use crate::resolve::SourceSettings;
use arrow::array::Int64Array;
use arrow::datatypes::{DataType, Field, Schema};
use std::collections::BTreeMap;
use std::path::Path;

fn settings(dir: &Path, source: &str) -> SourceSettings {
    let text = format!(
        "[source]\n{source}\n\n\
         [[model]]\nname = \"minilm\"\nprovider = \"local\"\n\
         id = \"sentence-transformers/all-MiniLM-L6-v2\"\n\n\
         [[embed]]\nmodel = \"minilm\"\ncolumn = \"text\"\n\n\
         [sink]\nuri = \"db\"\ntable = \"t\"\n"
    );
    SourceSettings::resolve(&crate::resolve::parse(&dir.join("p.toml"), &text).unwrap())
}

/// A Parquet file of `rows` rows (id, text) in row groups of `group` rows.
fn parquet(path: &Path, first: i64, rows: i64, group: usize) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let props = ::parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(group))
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut w = ::parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
    let ids: Vec<i64> = (first..first + rows).collect();
    let texts: Vec<String> = ids.iter().map(|i| format!("row {i}")).collect();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(texts)),
        ],
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// Every shard's rows (ids, and where `plan --shards` puts each), by shard.
fn read_shards(s: &SourceSettings, count: u32) -> Vec<Vec<String>> {
    let survey = survey_now(s).unwrap();
    let columns = survey.column_names();
    let id = id_column(s, |c| survey.schema.field_with_name(c).is_ok());
    let map = ShardMap::new(&survey, count, false).unwrap();
    (0..count)
        .map(|index| {
            let shard = Shard { index, count };
            let mut ids = Vec::new();
            for sb in open_shard(s, &survey, &columns, id.clone(), None, shard).unwrap() {
                let sb = sb.unwrap();
                for i in 0..sb.ids.len() {
                    let row_id = sb.ids.value(i).to_string();
                    assert_eq!(
                        map.shard_of(&sb.file, Some(sb.rows[i]), Some(&row_id)),
                        index,
                        "the plan's map puts {row_id} elsewhere"
                    );
                    ids.push(row_id);
                }
            }
            ids
        })
        .collect()
}

/// Each id in exactly one shard, and all of them.
fn assert_partition(shards: &[Vec<String>], all: &[String]) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for ids in shards {
        for id in ids {
            *seen.entry(id).or_default() += 1;
        }
    }
    assert!(seen.values().all(|&n| n == 1), "an id read twice");
    let mut want: Vec<&str> = all.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), want);
}

#[test]
fn parquet_shards_are_row_group_ranges_balanced_by_rows() {
    let dir = tempfile::tempdir().unwrap();
    // 100 rows in groups of 10, and 60 in groups of 20: 8 row groups, 160 rows.
    parquet(&dir.path().join("a.parquet"), 0, 100, 10);
    parquet(&dir.path().join("b.parquet"), 100, 60, 20);
    let s = settings(
        dir.path(),
        "type = \"parquet\"\npath = \"*.parquet\"\nid_column = \"id\"",
    );
    let shards = read_shards(&s, 4);
    let all: Vec<String> = (0..160).map(|i| i.to_string()).collect();
    assert_partition(&shards, &all);
    let sizes: Vec<usize> = shards.iter().map(Vec::len).collect();
    assert_eq!(sizes, [40, 40, 40, 40]);
    // The same shard again reads the same rows.
    assert_eq!(read_shards(&s, 4)[2], shards[2]);
    // Derived ids keep each file's own row numbers.
    let s = settings(
        dir.path(),
        "type = \"parquet\"\npath = \"*.parquet\"\ncolumns = [\"text\"]",
    );
    let shards = read_shards(&s, 3);
    let mut all: Vec<String> = (1..=100).map(|r| format!("a.parquet#{r}")).collect();
    all.extend((1..=60).map(|r| format!("b.parquet#{r}")));
    assert_partition(&shards, &all);
}

#[test]
fn csv_shards_are_whole_files_and_folder_shards_follow_the_path_hash() {
    let dir = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    for f in 0..5 {
        let mut csv = String::from("id,text\n");
        for r in 0..(10 + f * 3) {
            let id = format!("f{f}r{r}");
            csv.push_str(&format!("{id},hello {r}\n"));
            all.push(id);
        }
        std::fs::write(dir.path().join(format!("{f}.csv")), csv).unwrap();
    }
    let s = settings(
        dir.path(),
        "type = \"csv\"\npath = \"*.csv\"\nid_column = \"id\"",
    );
    let shards = read_shards(&s, 2);
    assert_partition(&shards, &all);
    // A file is never split.
    for ids in &shards {
        let files: std::collections::BTreeSet<&str> = ids.iter().map(|i| &i[..2]).collect();
        for other in shards.iter().filter(|o| *o != ids) {
            assert!(other.iter().all(|i| !files.contains(&i[..2])));
        }
    }
    let docs = dir.path().join("docs");
    std::fs::create_dir_all(docs.join("sub")).unwrap();
    let mut paths = Vec::new();
    for i in 0..40 {
        let rel = if i % 3 == 0 {
            format!("sub/d{i}.txt")
        } else {
            format!("d{i}.txt")
        };
        std::fs::write(docs.join(&rel), format!("document {i}")).unwrap();
        paths.push(rel);
    }
    let s = settings(
        dir.path(),
        &format!(
            "type = \"documents\"\npath = {:?}",
            docs.display().to_string()
        ),
    );
    let shards = read_shards(&s, 3);
    assert_partition(&shards, &paths);
    for (index, ids) in shards.iter().enumerate() {
        assert!(ids
            .iter()
            .all(|p| crate::util::shard_of(p, 3) == index as u32));
    }
}
