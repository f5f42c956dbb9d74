//! One repository's files: taken from the Hugging Face cache when there, else downloaded into it by
//! hf-hub. The cache is consulted first so that a model fetched once loads with no network at all.

use super::model_ref::HubRef;
use super::settings::HubSettings;
use crate::error::{EngineError, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use std::io::IsTerminal;
use std::path::PathBuf;

/// Downloads resume from the partial file, so a retry after a dropped connection is cheap.
const DOWNLOAD_RETRIES: usize = 2;

/// What the cache knows about one file at the cached commit.
enum Cached {
    Present(PathBuf),
    /// A `.no_exist` marker: the Hub answered 404 for this commit (huggingface_hub's convention).
    Absent,
    Unknown,
}

/// Why a download gave no file.
#[derive(Debug)]
enum Failure {
    /// 404: the repository has no such file (or no such repository).
    NotFound,
    /// No answer from the endpoint (DNS, connection, I/O); cached files may still serve.
    Unreachable(String),
    /// The endpoint answered, but with an error or with an answer hf-hub cannot use.
    Refused(String),
}

pub struct RepoFiles<'a> {
    /// The `HF://` string, named in every error.
    model: &'a str,
    settings: &'a HubSettings,
    repo: Repo,
    api: ApiRepo,
}

impl<'a> RepoFiles<'a> {
    pub fn open(model: &'a str, hub_ref: &HubRef, settings: &'a HubSettings) -> Result<RepoFiles<'a>> {
        let repo = Repo::with_revision(hub_ref.repo_id.clone(), RepoType::Model, hub_ref.revision.clone());
        let api = ApiBuilder::from_cache(Cache::new(settings.cache_dir.clone()))
            .with_endpoint(settings.endpoint.clone())
            .with_token(settings.token.clone())
            // hf-hub's bar redraws in place: only useful on a terminal, noise in a log file.
            .with_progress(std::io::stderr().is_terminal())
            .with_retries(DOWNLOAD_RETRIES)
            .with_user_agent("mlc-core", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| EngineError::model_load(model, format!("cannot set up the Hub client: {e}")))?;
        Ok(RepoFiles { model, settings, repo: repo.clone(), api: api.repo(repo) })
    }

    /// A file the model cannot do without.
    pub fn required(&self, file: &str) -> Result<PathBuf> {
        if let Cached::Present(path) = self.cached(file) {
            return Ok(path);
        }
        if self.settings.offline {
            return Err(self.error(format!(
                "{file} is not in the cache and HF_HUB_OFFLINE is set, so {} was not tried",
                self.api.url(file)
            )));
        }
        self.fetch(file).map_err(|failure| self.failure_error(file, failure))
    }

    /// A file that may be missing from the repository (a 404 means absent). With the endpoint out
    /// of reach it counts as absent too, so that a cached model still loads.
    pub fn optional(&self, file: &str) -> Result<Option<PathBuf>> {
        match self.cached(file) {
            Cached::Present(path) => return Ok(Some(path)),
            Cached::Absent => return Ok(None),
            Cached::Unknown if self.settings.offline => return Ok(None),
            Cached::Unknown => {}
        }
        match self.fetch(file) {
            Ok(path) => Ok(Some(path)),
            Err(Failure::NotFound) => Ok(None),
            Err(Failure::Unreachable(why)) => {
                log::warn!("{}: {why}; going on without {file}", self.api.url(file));
                Ok(None)
            }
            Err(failure) => Err(self.failure_error(file, failure)),
        }
    }

    /// The first of `files` that exists: all are looked up in the cache before any is downloaded,
    /// so the choice between alternatives never needs the network once one of them is cached.
    pub fn first_present(&self, files: &[&'static str]) -> Result<(&'static str, PathBuf)> {
        if let Some(found) = files.iter().find_map(|&f| match self.cached(f) {
            Cached::Present(path) => Some((f, path)),
            _ => None,
        }) {
            return Ok(found);
        }
        let names = files.join(", ");
        if self.settings.offline {
            return Err(self.error(format!("none of {names} is in the cache and HF_HUB_OFFLINE is set")));
        }
        for &file in files {
            match self.fetch(file) {
                Ok(path) => return Ok((file, path)),
                Err(Failure::NotFound) => continue,
                Err(failure) => return Err(self.failure_error(file, failure)),
            }
        }
        let base = self.api.url("");
        Err(self.error(format!("none of {names} was found at {base} (is the repository id right?)")))
    }

    /// `models--org--name` inside the hub cache.
    pub fn repo_dir(&self) -> PathBuf {
        self.settings.cache_dir.join(self.repo.folder_name())
    }

    fn cached(&self, file: &str) -> Cached {
        let Some(commit) = self.cached_commit() else { return Cached::Unknown };
        let snapshot = self.repo_dir().join("snapshots").join(&commit).join(file);
        if snapshot.exists() {
            Cached::Present(snapshot)
        } else if self.repo_dir().join(".no_exist").join(&commit).join(file).exists() {
            Cached::Absent
        } else {
            Cached::Unknown
        }
    }

    /// The commit the revision pointed at when last fetched. A full commit hash is its own
    /// snapshot name even where no ref file was written (huggingface_hub writes none for it).
    fn cached_commit(&self) -> Option<String> {
        let revision = self.repo.revision();
        let path = self.repo_dir().join("refs").join(revision);
        match std::fs::read_to_string(path) {
            Ok(commit) if !commit.trim().is_empty() => Some(commit.trim().to_string()),
            _ if revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()) => Some(revision.to_string()),
            _ => None,
        }
    }

    fn fetch(&self, file: &str) -> std::result::Result<PathBuf, Failure> {
        log::info!("fetching {} into {}", self.api.url(file), self.repo_dir().display());
        match self.api.download(file) {
            Ok(path) => Ok(path),
            Err(ApiError::RequestError(err)) => {
                if let ureq::Error::Status(404, response) = err.as_ref() {
                    self.mark_absent(file, response.header("x-repo-commit"));
                }
                Err(classify(*err, self.settings.token.is_some()))
            }
            Err(other) => Err(Failure::Refused(other.to_string())),
        }
    }

    /// Records a 404 the way huggingface_hub does, so the next load knows the file is absent
    /// without asking. Best effort: a failure here only costs a request next time.
    fn mark_absent(&self, file: &str, commit_header: Option<&str>) {
        let Some(commit) = commit_header.map(str::to_string).or_else(|| self.cached_commit()) else { return };
        let marker = self.repo_dir().join(".no_exist").join(commit.trim()).join(file);
        let written =
            marker.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|_| std::fs::File::create(&marker));
        if let Err(e) = written {
            log::debug!("cannot record {} as absent: {e}", marker.display());
        }
    }

    fn failure_error(&self, file: &str, failure: Failure) -> EngineError {
        let url = self.api.url(file);
        self.error(match failure {
            Failure::NotFound => format!("{url} was not found (HTTP 404)"),
            Failure::Unreachable(why) => format!("cannot reach {} for {url}: {why}", self.settings.endpoint),
            Failure::Refused(why) => format!("{url}: {why}"),
        })
    }

    /// Every hub error says where it looked: the endpoint URL (in `what`) and the cache directory.
    pub fn error(&self, what: String) -> EngineError {
        EngineError::model_load(self.model, format!("{what}; looked in cache directory {}", self.repo_dir().display()))
    }
}

/// 404 means absent; a request that got no answer at all leaves the cache to serve.
fn classify(err: ureq::Error, token_sent: bool) -> Failure {
    use ureq::ErrorKind::{ConnectionFailed, Dns, Io, ProxyConnect};
    match err {
        ureq::Error::Status(404, _) => Failure::NotFound,
        ureq::Error::Status(code @ (401 | 403), _) if token_sent => {
            Failure::Refused(format!("HTTP {code}: the token (HF_TOKEN or the HF_HOME token file) was refused"))
        }
        ureq::Error::Status(code @ (401 | 403), _) => Failure::Refused(format!(
            "HTTP {code}: no token was sent and the repository is private or gated; \
             set HF_TOKEN or log in (token file in HF_HOME)"
        )),
        ureq::Error::Status(code, response) => Failure::Refused(format!("HTTP {code} {}", response.status_text())),
        ureq::Error::Transport(t) if matches!(t.kind(), Dns | ConnectionFailed | Io | ProxyConnect) => {
            Failure::Unreachable(t.to_string())
        }
        ureq::Error::Transport(t) => Failure::Refused(t.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hub cache laid out as huggingface_hub leaves it, under a fresh temporary folder.
    fn cache(tag: &str, revision: &str, refs: Option<&str>, present: &[&str], absent: &[&str]) -> (PathBuf, HubRef) {
        let root = std::env::temp_dir().join(format!("mlc-hub-{tag}-{}", std::process::id()));
        let repo = root.join("models--org--name");
        let commit = refs.unwrap_or(revision);
        if let Some(refs) = refs {
            std::fs::create_dir_all(repo.join("refs")).expect("refs");
            std::fs::write(repo.join("refs").join(revision), refs).expect("ref");
        }
        for (folder, files) in [("snapshots", present), (".no_exist", absent)] {
            let dir = repo.join(folder).join(commit);
            std::fs::create_dir_all(&dir).expect("dir");
            for file in files {
                std::fs::write(dir.join(file), "{}").expect("file");
            }
        }
        (root, HubRef { repo_id: "org/name".into(), revision: revision.into(), file: None })
    }

    fn offline(cache_dir: PathBuf) -> HubSettings {
        // Port 9 (discard): offline lookups must never get as far as a connection.
        HubSettings { endpoint: "http://127.0.0.1:9".into(), cache_dir, token: None, offline: true }
    }

    #[test]
    fn offline_lookups_read_the_cache_layout_only() {
        let (root, hub_ref) = cache("offline", "main", Some("c0ffee"), &["config.json"], &["generation_config.json"]);
        let settings = offline(root.clone());
        let files = RepoFiles::open("HF://org/name", &hub_ref, &settings).expect("client");
        let snapshot = root.join("models--org--name/snapshots/c0ffee");
        assert_eq!(files.required("config.json").expect("cached"), snapshot.join("config.json"));
        let (name, _) = files.first_present(&["mlc-chat-config.json", "config.json"]).expect("one cached");
        assert_eq!(name, "config.json");
        assert_eq!(files.optional("generation_config.json").expect("marked absent"), None);
        assert_eq!(files.optional("tokenizer.json").expect("unknown counts as absent offline"), None);
        let err = files.required("model.safetensors").expect_err("not cached").to_string();
        assert!(err.contains("HF_HUB_OFFLINE") && err.contains(&root.join("models--org--name").display().to_string()));
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn a_commit_revision_is_its_own_snapshot() {
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let (root, hub_ref) = cache("commit", commit, None, &["config.json"], &[]);
        let settings = offline(root.clone());
        let files = RepoFiles::open("HF://org/name", &hub_ref, &settings).expect("client");
        assert!(files.required("config.json").is_ok());
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn http_failures_are_sorted() {
        let status = |code: u16| ureq::Error::Status(code, ureq::Response::new(code, "x", "").expect("response"));
        assert!(matches!(classify(status(404), false), Failure::NotFound));
        let Failure::Refused(no_token) = classify(status(401), false) else { panic!("401 is a refusal") };
        assert!(no_token.contains("HF_TOKEN"), "{no_token}");
        let Failure::Refused(refused) = classify(status(403), true) else { panic!("403 is a refusal") };
        assert!(refused.contains("was refused"), "{refused}");
        assert!(matches!(classify(status(500), false), Failure::Refused(_)));
    }
}
