//! The workers' intervals summed into one log line each, written as soon as every worker
//! has moved past them: memory stays at a few intervals however long the run.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::engine::Interval;
use crate::hdrlog::LogWriter;
use crate::report::Report;

pub struct Collector<'a> {
    log: &'a mut LogWriter,
    /// Where this run's interval 0 lies in the log (a ramp writes several runs into one).
    base: Duration,
    length: Duration,
    /// The latest interval each worker handed over.
    latest: Vec<Option<u64>>,
    pending: BTreeMap<u64, Report>,
}

impl<'a> Collector<'a> {
    pub fn new(log: &'a mut LogWriter, base: Duration, length: Duration, workers: usize) -> Self {
        Collector {
            log,
            base,
            length,
            latest: vec![None; workers],
            pending: BTreeMap::new(),
        }
    }

    pub fn take(&mut self, interval: Interval) {
        if let Some(latest) = self.latest.get_mut(interval.worker) {
            *latest = Some(interval.index);
        }
        match self.pending.entry(interval.index) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(interval.report);
            }
            std::collections::btree_map::Entry::Occupied(mut slot) => {
                slot.get_mut().merge(&interval.report)
            }
        }
    }

    /// Writes every interval that no running worker can still add to.
    pub fn write_ready(&mut self, finished: &[bool]) -> anyhow::Result<()> {
        let settled = self
            .latest
            .iter()
            .zip(finished)
            .filter(|(_, done)| !**done)
            .map(|(latest, _)| *latest)
            .min()
            .flatten();
        // A running worker has closed every interval up to its latest; with none running,
        // `finish` writes the rest (the last one is shorter).
        let Some(settled) = settled else {
            return Ok(());
        };
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > settled {
                break;
            }
            let (index, report) = entry.remove_entry();
            self.write(index, self.length, &report)?;
        }
        Ok(())
    }

    /// Writes what is left; the last interval ends with the run.
    pub fn finish(mut self, elapsed: Duration) -> anyhow::Result<()> {
        while let Some((index, report)) = self.pending.pop_first() {
            let begins = self.length * u32::try_from(index).unwrap_or(u32::MAX);
            let length = elapsed.saturating_sub(begins).min(self.length);
            self.write(index, length.max(Duration::from_millis(1)), &report)?;
        }
        Ok(())
    }

    fn write(&mut self, index: u64, length: Duration, report: &Report) -> anyhow::Result<()> {
        let offset = self.base + self.length * u32::try_from(index).unwrap_or(u32::MAX);
        self.log.interval(offset, length, report)
    }
}
