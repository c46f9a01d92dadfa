//! The fast engine's read side (SPEC section 9.3): account reports and at-risk lists.

use super::FastEngine;
use crate::{
    engine::{At, RiskQuery},
    protocol::{AccountReport, RiskItem},
    report::{self, AccountView},
};

impl FastEngine {
    /// See [`crate::engine::Engine::account_report`].
    pub(super) fn report_of(&self, account: u64, at: At) -> Option<AccountReport> {
        self.lookup(account)?;
        Some(self.view(account).report(&self.cfg, &self.marks, at))
    }

    /// See [`crate::engine::Engine::at_risk`].
    pub(super) fn risk_items(&self, query: &RiskQuery) -> Vec<RiskItem> {
        let views: Vec<AccountView> = self.accounts.id.iter().map(|&id| self.view(id)).collect();
        report::at_risk(&self.cfg, &self.marks, &views, query)
    }
}
