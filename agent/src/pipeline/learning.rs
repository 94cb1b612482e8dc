//! `vigil run`'s side of learning: which acts go into which `Learn` policy's table, and the
//! tables' round trips to their `RuntimePolicyReport`s (kept from before a restart, taken
//! back before anything is published; published when changed, retried when that fails).
use std::{collections::BTreeSet, sync::Arc, time::Duration};

use tokio::sync::mpsc;

use super::{Learners, cluster::ClusterLink};
use crate::{
    enforce::Enforcer,
    event::{Body, Event, Verdict},
    learn::{
        recorder::{LearnKey, Recorder},
        report::{ReportError, Reports},
        table::LearnTable,
    },
};

/// How long the last publish at shutdown may take.
const LAST_PUBLISH: Duration = Duration::from_secs(5);

/// The `Learn` policies whose tables `ev` goes into: those of the set the kernel decided it
/// under.
pub(crate) fn learners_of(enforcer: &Enforcer, ev: &Event) -> Learners {
    let set = match ev.header.verdict {
        Verdict::Learned { set } | Verdict::Violation { set, .. } => set,
        Verdict::Observed => match &ev.body {
            Body::Exec(exec) => match exec.undecided_set {
                Some(set) => set,
                None => return Vec::new(),
            },
            _ => return Vec::new(),
        },
    };
    enforcer.learners(set)
}

/// What came back from the API server.
pub(crate) enum Answer {
    Restored(LearnKey, Box<Result<Option<LearnTable>, ReportError>>),
    Published(Vec<(LearnKey, Result<(), ReportError>)>),
}

pub(crate) struct Learning {
    reports: Option<Arc<Reports>>,
    answers_tx: mpsc::UnboundedSender<Answer>,
    answers: mpsc::UnboundedReceiver<Answer>,
    /// A publish round is under way: the next waits for it, so an older table never lands
    /// after a newer one.
    publishing: bool,
    /// Reports whose reading failed: read again at the next tick.
    unread: BTreeSet<LearnKey>,
    /// Said once: learning without a cluster keeps the tables but cannot publish them.
    warned_no_cluster: bool,
    /// `Recorder::stale` as last said in the log.
    stale_said: u64,
}

impl Learning {
    pub(crate) fn new(link: Option<&ClusterLink>, node: &str) -> Self {
        let (answers_tx, answers) = mpsc::unbounded_channel();
        Self {
            reports: link.map(|l| Arc::new(Reports::new(l.client.clone(), node))),
            answers_tx,
            answers,
            publishing: false,
            unread: BTreeSet::new(),
            warned_no_cluster: false,
            stale_said: 0,
        }
    }

    /// After the policies in force changed: a table for each policy that learns now, its
    /// report read back first.
    pub(crate) fn follow(
        &mut self,
        enforcer: &Enforcer,
        recorder: &mut Recorder,
        link: Option<&ClusterLink>,
    ) {
        let learning = enforcer.learning_policies();
        self.unread.retain(|key| learning.contains(key));
        for key in recorder.follow(&learning) {
            tracing::info!(policy = %key, "learning: recording what the selected pods do");
            self.read(key, recorder, link);
        }
    }

    fn read(&mut self, key: LearnKey, recorder: &mut Recorder, link: Option<&ClusterLink>) {
        let Some(reports) = self.reports.clone() else {
            if !self.warned_no_cluster {
                self.warned_no_cluster = true;
                tracing::warn!(
                    policy = %key,
                    "a policy learns, but without a cluster there is nowhere to publish what it learns"
                );
            }
            recorder.restore(&key, None);
            return;
        };
        // The report is taken back only from the policy in force: its uid, from the store.
        let Some(uid) = link.and_then(|l| l.policy_uid(&key)) else {
            self.unread.insert(key);
            return;
        };
        let tx = self.answers_tx.clone();
        tokio::spawn(async move {
            let kept = reports.fetch(&key, &uid).await;
            let _ = tx.send(Answer::Restored(key, Box::new(kept)));
        });
    }

    /// The next answer from the API server.
    pub(crate) async fn answer(&mut self) -> Option<Answer> {
        self.answers.recv().await
    }

    pub(crate) fn settle(&mut self, answer: Answer, recorder: &mut Recorder) {
        match answer {
            Answer::Restored(key, kept) => match *kept {
                Ok(kept) => {
                    if let Some(kept) = &kept {
                        tracing::info!(
                            policy = %key,
                            events = kept.events,
                            "learning: what this node learned before is taken back"
                        );
                    }
                    recorder.restore(&key, kept.as_ref());
                }
                Err(err) => {
                    tracing::warn!(%err, "learning: reading the report kept; tried again");
                    self.unread.insert(key);
                }
            },
            Answer::Published(results) => {
                self.publishing = false;
                for (key, result) in results {
                    if let Err(err) = result {
                        tracing::warn!(%err, "learning: publishing the report; tried again");
                        recorder.again(&key);
                    }
                }
            }
        }
    }

    /// Publishes the tables that changed, and reads again the reports that could not be read.
    pub(crate) fn tick(&mut self, recorder: &mut Recorder, link: Option<&ClusterLink>) {
        if recorder.stale > self.stale_said {
            tracing::warn!(
                events = recorder.stale - self.stale_said,
                "learning: events of a Learn policy no longer in force were not kept"
            );
            self.stale_said = recorder.stale;
        }
        for key in std::mem::take(&mut self.unread) {
            self.read(key, recorder, link);
        }
        if self.publishing {
            return;
        }
        let (Some(reports), Some(link)) = (self.reports.clone(), link) else {
            // Nowhere to publish: kept in memory (see `read`).
            recorder.due();
            return;
        };
        let mut due = Vec::new();
        for (key, table) in recorder.due() {
            match link.policy_uid(&key) {
                Some(uid) => due.push((key, uid, table)),
                // Not in the store (deleted a moment ago, or not listed yet): later.
                None => recorder.again(&key),
            }
        }
        if due.is_empty() {
            return;
        }
        self.publishing = true;
        let tx = self.answers_tx.clone();
        tokio::spawn(async move {
            let mut results = Vec::new();
            for (key, uid, table) in due {
                let result = reports.publish(&key, &uid, &table).await;
                results.push((key, result));
            }
            let _ = tx.send(Answer::Published(results));
        });
    }

    /// At shutdown: what changed since the last publish, published within a bounded time.
    pub(crate) async fn last(&mut self, recorder: &mut Recorder, link: Option<&ClusterLink>) {
        if self.publishing {
            // Its results first: a failed table is then due again.
            if let Ok(Some(answer)) = tokio::time::timeout(LAST_PUBLISH, self.answer()).await {
                self.settle(answer, recorder);
            }
        }
        self.tick(recorder, link);
        if self.publishing
            && let Ok(Some(answer)) = tokio::time::timeout(LAST_PUBLISH, self.answer()).await
        {
            self.settle(answer, recorder);
        }
    }
}
