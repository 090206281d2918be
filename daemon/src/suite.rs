//! Prompt suites: plain text (one prompt a line), JSONL and CSV with a configurable column
//! mapping, or a folder of such files (each file's stem becomes the category when the records
//! carry none). A malformed file is an error naming the file and the line.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{SuiteConfig, SuiteFormat};

/// One prompt of a suite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompt {
    /// `suite/id`, unique across the loaded suites.
    pub id: String,
    /// The suite's name.
    pub suite: String,
    /// The category (the record's, else the file's stem for folder suites, else the suite name).
    pub category: String,
    /// The prompt text.
    pub text: String,
}

/// Loaded prompts and a content hash.
#[derive(Debug, Clone, Serialize)]
pub struct Suite {
    /// The suite's name.
    pub name: String,
    /// Its prompts, after filters, offset and limit.
    pub prompts: Vec<Prompt>,
    /// sha256 over the prompts (ids, categories, texts) in order.
    pub content_hash: String,
    /// Prompts in the files before filters, offset, limit and per-category caps.
    pub available: usize,
}

/// Why a suite cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// The file or folder cannot be read.
    #[error("suite '{suite}': cannot read {path}: {cause}")]
    Io {
        /// Suite name.
        suite: String,
        /// Path.
        path: PathBuf,
        /// Cause.
        cause: std::io::Error,
    },
    /// A record is malformed.
    #[error("suite '{suite}': {path}:{line}: {message}")]
    Record {
        /// Suite name.
        suite: String,
        /// File.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The suite has no prompts after filtering.
    #[error("suite '{suite}' has no prompts{detail}")]
    Empty {
        /// Suite name.
        suite: String,
        /// Extra detail (e.g. the filter).
        detail: String,
    },
}

/// Loads one configured suite.
pub fn load(cfg: &SuiteConfig) -> Result<Suite, SuiteError> {
    let io = |path: &Path, cause| SuiteError::Io { suite: cfg.name.clone(), path: path.to_owned(), cause };
    let meta = std::fs::metadata(&cfg.path).map_err(|e| io(&cfg.path, e))?;
    let mut files = Vec::new();
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&cfg.path)
            .map_err(|e| io(&cfg.path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && SuiteFormat::from_path(p).is_some())
            .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
            .collect();
        entries.sort();
        for p in entries {
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("").to_owned();
            let format = cfg.format.or_else(|| SuiteFormat::from_path(&p)).unwrap_or(SuiteFormat::Txt);
            files.push((p, format, stem));
        }
    } else {
        files.push((cfg.path.clone(), cfg.format(), cfg.name.clone()));
    }
    let mut prompts = Vec::new();
    let mut seen = HashSet::new();
    for (path, format, default_category) in files {
        let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        let records = parse_records(&text, format, cfg).map_err(|(line, message)| SuiteError::Record {
            suite: cfg.name.clone(),
            path: path.clone(),
            line,
            message,
        })?;
        let multi_file = cfg.path.is_dir();
        for r in records {
            let local_id = match (multi_file, r.id) {
                (true, Some(id)) => format!("{default_category}/{id}"),
                (true, None) => format!("{default_category}/{}", r.line),
                (false, Some(id)) => id,
                (false, None) => r.line.to_string(),
            };
            let id = format!("{}/{local_id}", cfg.name);
            if !seen.insert(id.clone()) {
                return Err(SuiteError::Record {
                    suite: cfg.name.clone(),
                    path: path.clone(),
                    line: r.line,
                    message: format!("duplicate prompt id '{local_id}'"),
                });
            }
            prompts.push(Prompt {
                id,
                suite: cfg.name.clone(),
                category: r.category.unwrap_or_else(|| default_category.clone()),
                text: r.text,
            });
        }
    }
    let available = prompts.len();
    if !cfg.categories.is_empty() {
        prompts.retain(|p| cfg.categories.contains(&p.category));
    }
    if let Some(cap) = cfg.per_category {
        let mut taken: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        prompts.retain(|p| {
            let n = taken.entry(p.category.clone()).or_default();
            *n += 1;
            *n <= cap
        });
    }
    let prompts: Vec<Prompt> = prompts.into_iter().skip(cfg.offset).take(cfg.limit.unwrap_or(usize::MAX)).collect();
    if prompts.is_empty() {
        let detail =
            if cfg.categories.is_empty() { String::new() } else { format!(" in categories {:?}", cfg.categories) };
        return Err(SuiteError::Empty { suite: cfg.name.clone(), detail });
    }
    let content_hash = hash_prompts(&prompts);
    Ok(Suite { name: cfg.name.clone(), prompts, content_hash, available })
}

/// sha256 over prompts (id, category, text), in order.
pub fn hash_prompts(prompts: &[Prompt]) -> String {
    let mut h = Sha256::new();
    for p in prompts {
        for part in [&p.id, &p.category, &p.text] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
    }
    hex::encode(h.finalize())
}

pub(crate) struct Record {
    line: usize,
    id: Option<String>,
    category: Option<String>,
    text: String,
}

type ParseResult = Result<Vec<Record>, (usize, String)>;

/// The records of one suite file's text, or the line and reason it cannot be read.
pub(crate) fn parse_records(text: &str, format: SuiteFormat, cfg: &SuiteConfig) -> ParseResult {
    match format {
        SuiteFormat::Txt => parse_txt(text),
        SuiteFormat::Jsonl => parse_jsonl(text, cfg),
        SuiteFormat::Csv => parse_csv(text, cfg),
    }
}

fn parse_txt(text: &str) -> ParseResult {
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| Record { line: i + 1, id: None, category: None, text: l.trim().to_owned() })
        .collect())
}

fn json_field(v: &serde_json::Value, field: &str, line: usize, what: &str) -> Result<Option<String>, (usize, String)> {
    match v.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
        // A list (e.g. Do-Not-Answer's `intents`): its first element.
        Some(serde_json::Value::Array(a)) if what != "prompt" => match a.first() {
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
            None => Ok(None),
            Some(other) => Err((line, format!("the {what} field '{field}' holds {other}, not a string"))),
        },
        Some(other) => Err((line, format!("the {what} field '{field}' holds {other}, not a string"))),
    }
}

fn parse_jsonl(text: &str, cfg: &SuiteConfig) -> ParseResult {
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let line = i + 1;
        if l.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(l).map_err(|e| (line, format!("not valid JSON: {e}")))?;
        if !v.is_object() {
            return Err((line, "expected a JSON object".into()));
        }
        let prompt = json_field(&v, cfg.prompt_field(), line, "prompt")?.ok_or_else(|| {
            (line, format!("no '{}' field (set `prompt_field` to the field holding the prompt)", cfg.prompt_field()))
        })?;
        let id = match &cfg.id_field {
            Some(f) => Some(json_field(&v, f, line, "id")?.ok_or_else(|| (line, format!("no '{f}' field")))?),
            None => None,
        };
        let category = match &cfg.category_field {
            Some(f) => json_field(&v, f, line, "category")?,
            None => None,
        };
        push_record(&mut out, line, id, category, prompt)?;
    }
    Ok(out)
}

fn push_record(
    out: &mut Vec<Record>,
    line: usize,
    id: Option<String>,
    category: Option<String>,
    text: String,
) -> Result<(), (usize, String)> {
    let text = text.trim().to_owned();
    if text.is_empty() {
        return Err((line, "the prompt is empty".into()));
    }
    out.push(Record { line, id, category: category.filter(|c| !c.trim().is_empty()), text });
    Ok(())
}

fn parse_csv(text: &str, cfg: &SuiteConfig) -> ParseResult {
    let mut rdr = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(text.as_bytes());
    let headers = rdr.headers().map_err(|e| (1, format!("cannot read the header row: {e}")))?.clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let prompt_col = col(cfg.prompt_field()).ok_or_else(|| {
        (
            1,
            format!(
                "no '{}' column in the header {:?} (set `prompt_field`)",
                cfg.prompt_field(),
                headers.iter().collect::<Vec<_>>()
            ),
        )
    })?;
    let id_col = match &cfg.id_field {
        Some(f) => Some(col(f).ok_or_else(|| (1, format!("no '{f}' column in the header")))?),
        None => None,
    };
    let cat_col = match &cfg.category_field {
        Some(f) => Some(col(f).ok_or_else(|| (1, format!("no '{f}' column in the header")))?),
        None => None,
    };
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
            (line, format!("malformed CSV: {e}"))
        })?;
        let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
        if rec.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let get = |c: usize| rec.get(c).map(str::to_owned);
        let prompt = get(prompt_col).unwrap_or_default();
        let id = id_col.and_then(get).filter(|s| !s.trim().is_empty());
        if id_col.is_some() && id.is_none() {
            return Err((line, "the id column is empty".into()));
        }
        push_record(&mut out, line, id, cat_col.and_then(get), prompt)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str, path: &Path) -> SuiteConfig {
        SuiteConfig::new(name, path)
    }

    #[test]
    fn txt_jsonl_csv_and_folders() {
        let d = tempfile::tempdir().unwrap();
        let txt = d.path().join("a.txt");
        std::fs::write(&txt, "first prompt\n\n  second prompt  \nthird\n").unwrap();
        let s = load(&cfg("a", &txt)).unwrap();
        assert_eq!(s.prompts.len(), 3);
        assert_eq!(s.prompts[1].id, "a/3");
        assert_eq!(s.prompts[1].text, "second prompt");
        assert_eq!(s.prompts[1].category, "a");

        let jl = d.path().join("b.jsonl");
        std::fs::write(
            &jl,
            "{\"q\": \"how?\", \"k\": 7, \"cat\": [\"S1\"]}\n{\"q\": \"why?\", \"k\": 8, \"cat\": \"S2\"}\n",
        )
        .unwrap();
        let mut c = cfg("b", &jl);
        c.prompt_field = Some("q".into());
        c.id_field = Some("k".into());
        c.category_field = Some("cat".into());
        let s = load(&c).unwrap();
        assert_eq!(
            s.prompts[0],
            Prompt { id: "b/7".into(), suite: "b".into(), category: "S1".into(), text: "how?".into() }
        );
        assert_eq!(s.prompts[1].category, "S2");

        let csvp = d.path().join("c.csv");
        std::fs::write(&csvp, "id,prompt,category\n1,\"Hello, world\",x\n2,\"multi\nline \"\"quoted\"\"\",y\n")
            .unwrap();
        let mut c = cfg("c", &csvp);
        c.id_field = Some("id".into());
        c.category_field = Some("category".into());
        c.categories = vec!["y".into()];
        let s = load(&c).unwrap();
        assert_eq!(s.prompts.len(), 1);
        assert_eq!(s.prompts[0].text, "multi\nline \"quoted\"");

        let folder = d.path().join("dna");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("misinformation.jsonl"), "{\"prompt\": \"p1\"}\n{\"prompt\": \"p2\"}\n").unwrap();
        std::fs::write(folder.join("malicious_uses.jsonl"), "{\"prompt\": \"p3\"}\n").unwrap();
        let mut c = cfg("dna", &folder);
        c.per_category = Some(1);
        let s = load(&c).unwrap();
        assert_eq!(
            s.prompts.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["dna/malicious_uses/1", "dna/misinformation/1"]
        );
        assert_eq!(s.available, 3, "the prompts before the slice");
        c.per_category = None;
        c.limit = Some(2);
        let s = load(&c).unwrap();
        assert_eq!(
            s.prompts.iter().map(|p| p.category.as_str()).collect::<Vec<_>>(),
            ["malicious_uses", "misinformation"]
        );
        assert_eq!(s.prompts[1].id, "dna/misinformation/1");
        // The hash follows the content.
        let h = s.content_hash.clone();
        c.limit = Some(3);
        assert_ne!(load(&c).unwrap().content_hash, h);
    }

    #[test]
    fn malformed_files_name_the_line() {
        let d = tempfile::tempdir().unwrap();
        let jl = d.path().join("bad.jsonl");
        std::fs::write(&jl, "{\"prompt\": \"ok\"}\n\n{\"prompt\": \"ok\"\n").unwrap();
        let e = load(&cfg("s", &jl)).unwrap_err().to_string();
        assert!(e.contains("bad.jsonl:3") && e.contains("not valid JSON"), "{e}");
        std::fs::write(&jl, "{\"text\": \"x\"}\n").unwrap();
        let e = load(&cfg("s", &jl)).unwrap_err().to_string();
        assert!(e.contains(":1") && e.contains("prompt_field"), "{e}");
        std::fs::write(&jl, "{\"prompt\": \"a\", \"id\": 1}\n{\"prompt\": \"b\", \"id\": 1}\n").unwrap();
        let mut c = cfg("s", &jl);
        c.id_field = Some("id".into());
        let e = load(&c).unwrap_err().to_string();
        assert!(e.contains(":2") && e.contains("duplicate"), "{e}");
        let csvp = d.path().join("bad.csv");
        std::fs::write(&csvp, "prompt,x\na,b\nc\n").unwrap();
        let e = load(&cfg("s", &csvp)).unwrap_err().to_string();
        assert!(e.contains("bad.csv:3"), "{e}");
        let e = load(&cfg("s", &d.path().join("missing.txt"))).unwrap_err().to_string();
        assert!(e.contains("cannot read"), "{e}");
        let empty = d.path().join("empty.txt");
        std::fs::write(&empty, "\n\n").unwrap();
        assert!(matches!(load(&cfg("s", &empty)), Err(SuiteError::Empty { .. })));
    }
}
