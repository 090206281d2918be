//! The `judge_calibrations` table: what each judge measured on its labelled calibration set,
//! by judge identity (component, settings, judge model). Scoring reads it to correct a
//! judge's rates for its error in every run that judge scored, runs made before the
//! calibration was configured included.

use rusqlite::OptionalExtension;

use super::{now_ms, Result, Store};
use crate::judge::calibration::JudgeCalibration;

impl Store {
    /// Records (or replaces) the calibration of the judge identified by `key`.
    pub fn record_calibration(&self, key: &str, judge: &str, calibration: &JudgeCalibration) -> Result<()> {
        let json = serde_json::to_string(calibration)?;
        self.write(|c| {
            c.execute(
                "INSERT INTO judge_calibrations (judge_key, judge, calibration, measured_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(judge_key) DO UPDATE SET judge = ?2, calibration = ?3, measured_at = ?4",
                rusqlite::params![key, judge, json, now_ms()],
            )?;
            Ok(())
        })
    }

    /// Forgets the calibration of the judge identified by `key` (its configuration names no
    /// calibration set any more). Returns true when there was one.
    pub fn forget_calibration(&self, key: &str) -> Result<bool> {
        self.write(|c| Ok(c.execute("DELETE FROM judge_calibrations WHERE judge_key = ?1", [key])? > 0))
    }

    /// The calibration of the judge identified by `key`, if one was recorded.
    pub fn calibration(&self, key: &str) -> Result<Option<JudgeCalibration>> {
        let json: Option<String> = self.read(|c| {
            Ok(c.query_row("SELECT calibration FROM judge_calibrations WHERE judge_key = ?1", [key], |r| r.get(0))
                .optional()?)
        })?;
        Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
    }
}
