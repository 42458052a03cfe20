//! Staffing forecasts: Erlang B, Erlang C (M/M/n) and Erlang A (M/M/n+M, with patience).
//!
//! All computations are numerically stable for tens of thousands of agents: Erlang B uses
//! the recursion `B(0) = 1, B(k) = a·B(k−1) / (k + a·B(k−1))` (no factorials or powers);
//! Erlang A works with the birth–death chain's stationary distribution in log space and
//! computes the answered-within-T probability by uniformisation, in chunks short enough that
//! no Poisson weight underflows.
//!
//! Service level is the share of *all* arriving customers answered within T (for Erlang C
//! this is `P(W ≤ T) = 1 − C·e^{−(n−a)T/AHT}`); ASA is the mean wait of answered customers.

use serde::{Deserialize, Serialize};

use crate::error::RouterError;

/// The most agents any search tries.
pub const MAX_AGENTS: u32 = 1_000_000;

/// Arrivals per interval and average handle time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// Arrivals in one interval.
    pub arrivals: f64,
    /// The interval's length, in seconds.
    pub interval_s: f64,
    /// Average handle time (talk + wrap-up), in seconds.
    pub aht_s: f64,
}

impl Workload {
    /// Offered load in erlangs: arrivals × AHT / interval.
    #[must_use]
    pub fn erlangs(&self) -> f64 {
        self.arrivals * self.aht_s / self.interval_s
    }

    fn validate(&self) -> Result<(), RouterError> {
        positive("arrivals", self.arrivals)?;
        positive("interval_s", self.interval_s)?;
        positive("aht_s", self.aht_s)?;
        let a = self.erlangs();
        if !a.is_finite() || a > f64::from(MAX_AGENTS) {
            return Err(RouterError::InvalidWorkload {
                what: "erlangs",
                value: a,
            });
        }
        Ok(())
    }
}

fn positive(what: &'static str, value: f64) -> Result<(), RouterError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(RouterError::InvalidWorkload { what, value })
    }
}

fn non_negative(what: &'static str, value: f64) -> Result<(), RouterError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(RouterError::InvalidWorkload { what, value })
    }
}

fn fraction(what: &'static str, value: f64) -> Result<(), RouterError> {
    if value.is_finite() && value > 0.0 && value < 1.0 {
        Ok(())
    } else {
        Err(RouterError::InvalidWorkload { what, value })
    }
}

/// Erlang B: the blocking probability of `agents` servers offered `erlangs` of load with no
/// queue.
#[must_use]
pub fn erlang_b(agents: u32, erlangs: f64) -> f64 {
    let mut b = 1.0;
    for k in 1..=agents {
        b = erlangs * b / (f64::from(k) + erlangs * b);
    }
    b
}

fn erlang_c_from_b(agents: u32, erlangs: f64, b: f64) -> f64 {
    let n = f64::from(agents);
    if n <= erlangs {
        return 1.0;
    }
    n * b / (n - erlangs * (1.0 - b))
}

/// Erlang C: the probability that an arriving customer waits, with `agents` servers and
/// `erlangs` of load. 1 when the queue is unstable (`agents <= erlangs`).
#[must_use]
pub fn erlang_c(agents: u32, erlangs: f64) -> f64 {
    erlang_c_from_b(agents, erlangs, erlang_b(agents, erlangs))
}

/// Erlang C predictions for one staffing level.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ErlangC {
    /// Agents.
    pub agents: u32,
    /// Offered load in erlangs.
    pub erlangs: f64,
    /// Probability an arriving customer waits.
    pub p_wait: f64,
    /// Probability of an answer within the target time.
    pub service_level: f64,
    /// Mean wait, in seconds (infinite when unstable).
    pub asa_s: f64,
    /// erlangs / agents, at most 1.
    pub occupancy: f64,
}

fn c_metrics(w: &Workload, agents: u32, b: f64, within_s: f64) -> ErlangC {
    let a = w.erlangs();
    let n = f64::from(agents);
    let p_wait = erlang_c_from_b(agents, a, b);
    let (service_level, asa_s) = if n > a {
        (
            1.0 - p_wait * (-(n - a) * within_s / w.aht_s).exp(),
            p_wait * w.aht_s / (n - a),
        )
    } else {
        (0.0, f64::INFINITY)
    };
    ErlangC {
        agents,
        erlangs: a,
        p_wait,
        service_level,
        asa_s,
        occupancy: if agents == 0 { 1.0 } else { (a / n).min(1.0) },
    }
}

/// Erlang C predictions with `agents` agents and a service-level target time of `within_s`.
///
/// # Errors
/// [`RouterError::InvalidWorkload`] for non-positive or non-finite inputs.
pub fn erlang_c_metrics(w: &Workload, agents: u32, within_s: f64) -> Result<ErlangC, RouterError> {
    w.validate()?;
    non_negative("within_s", within_s)?;
    Ok(c_metrics(
        w,
        agents,
        erlang_b(agents, w.erlangs()),
        within_s,
    ))
}

/// Walks staffing levels upwards from the smallest stable one, keeping Erlang B incremental,
/// until `ok` holds.
fn search_c(
    w: &Workload,
    within_s: f64,
    ok: impl Fn(&ErlangC) -> bool,
) -> Result<ErlangC, RouterError> {
    let a = w.erlangs();
    // Smallest n > a; a is at most MAX_AGENTS (validated), so this fits.
    let mut n = (a.floor() as u32).saturating_add(1);
    let mut b = erlang_b(n, a);
    loop {
        let m = c_metrics(w, n, b, within_s);
        if ok(&m) {
            return Ok(m);
        }
        if n >= MAX_AGENTS {
            return Err(RouterError::Unreachable {
                max_agents: MAX_AGENTS,
            });
        }
        n += 1;
        b = a * b / (f64::from(n) + a * b);
    }
}

/// Erlang C: the fewest agents answering at least `target` (0..1) of customers within
/// `within_s` seconds (80/20 is `target = 0.8, within_s = 20`), with the predictions at that
/// staffing.
///
/// # Errors
/// [`RouterError::InvalidWorkload`] for bad inputs, [`RouterError::Unreachable`] past
/// [`MAX_AGENTS`].
pub fn agents_for_service_level(
    w: &Workload,
    target: f64,
    within_s: f64,
) -> Result<ErlangC, RouterError> {
    w.validate()?;
    fraction("target", target)?;
    non_negative("within_s", within_s)?;
    search_c(w, within_s, |m| m.service_level >= target)
}

/// Erlang C: the fewest agents keeping the average speed of answer at or under `asa_s`.
///
/// # Errors
/// As [`agents_for_service_level`].
pub fn agents_for_asa(w: &Workload, asa_s: f64) -> Result<ErlangC, RouterError> {
    w.validate()?;
    positive("asa_s", asa_s)?;
    search_c(w, 0.0, |m| m.asa_s <= asa_s)
}

/// Erlang A (M/M/n+M) predictions for one staffing level.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ErlangA {
    /// Agents.
    pub agents: u32,
    /// Offered load in erlangs.
    pub erlangs: f64,
    /// Probability an arriving customer waits.
    pub p_wait: f64,
    /// Probability an arriving customer abandons.
    pub p_abandon: f64,
    /// Probability an arriving customer is answered within the target time.
    pub service_level: f64,
    /// Mean wait of answered customers, in seconds.
    pub asa_s: f64,
    /// Carried load / agents.
    pub occupancy: f64,
}

/// The furthest the Erlang A chain is followed past `agents` (where the probability is
/// already negligible for any sensible input).
const MAX_QUEUE_STATES: usize = 2_000_000;

/// Erlang A predictions with `agents` agents, mean customer patience `patience_s` and a
/// service-level target time of `within_s`.
///
/// # Errors
/// [`RouterError::InvalidWorkload`] for non-positive or non-finite inputs.
pub fn erlang_a_metrics(
    w: &Workload,
    agents: u32,
    patience_s: f64,
    within_s: f64,
) -> Result<ErlangA, RouterError> {
    w.validate()?;
    positive("patience_s", patience_s)?;
    non_negative("within_s", within_s)?;
    Ok(a_metrics(w, agents, patience_s, within_s))
}

fn a_metrics(w: &Workload, agents: u32, patience_s: f64, within_s: f64) -> ErlangA {
    let lambda = w.arrivals / w.interval_s;
    let mu = 1.0 / w.aht_s;
    let theta = 1.0 / patience_s;
    let n = agents as usize;
    let nmu = f64::from(agents) * mu;

    // Stationary distribution of the number in system, in log space.
    let mut logw: Vec<f64> = Vec::with_capacity(n + 64);
    logw.push(0.0);
    let mut max = 0.0f64;
    for k in 1..=n {
        let v = logw[k - 1] + (lambda / (k as f64 * mu)).ln();
        max = max.max(v);
        logw.push(v);
    }
    let mut j = 0usize;
    loop {
        j += 1;
        let rate = nmu + j as f64 * theta;
        let last = logw[logw.len() - 1];
        let v = last + (lambda / rate).ln();
        max = max.max(v);
        logw.push(v);
        if (rate > lambda && v < max - 45.0) || j >= MAX_QUEUE_STATES {
            break;
        }
    }
    let z: f64 = logw.iter().map(|l| (l - max).exp()).sum();
    let p: Vec<f64> = logw.iter().map(|l| (l - max).exp() / z).collect();
    let below: f64 = p[..n].iter().sum();
    let queue = &p[n..];
    let p_wait = 1.0 - below;
    let lq: f64 = queue.iter().enumerate().map(|(j, pj)| j as f64 * pj).sum();
    let p_abandon = (theta * lq / lambda).min(1.0);

    // A customer arriving to find j others waiting is at position j. It moves forward at
    // rate nμ + jθ, is served from position 0 at rate nμ, and abandons at rate θ.
    // s_j: eventually served; h_j: E[wait · 1{served}].
    let mut served = below;
    let mut wait_served = 0.0;
    let (mut s, mut h) = (0.0, 0.0);
    for (j, pj) in queue.iter().enumerate() {
        let forward = nmu + j as f64 * theta;
        let out = forward + theta;
        if j == 0 {
            s = nmu / out;
            h = s / out;
        } else {
            s *= forward / out;
            h = s / out + forward / out * h;
        }
        served += pj * s;
        wait_served += pj * h;
    }
    let asa_s = if served > 0.0 {
        wait_served / served
    } else {
        f64::INFINITY
    };
    let service_level = below + served_within(queue, nmu, theta, within_s);
    let carried = w.erlangs() * (1.0 - p_abandon);
    ErlangA {
        agents,
        erlangs: w.erlangs(),
        p_wait,
        p_abandon,
        service_level: service_level.clamp(0.0, 1.0),
        asa_s,
        occupancy: if agents == 0 {
            1.0
        } else {
            (carried / f64::from(agents)).min(1.0)
        },
    }
}

/// Probability mass (from initial positions `init`) served within `t` seconds, by
/// uniformisation of the position chain, `t` cut into chunks of at most 30 expected jumps.
fn served_within(init: &[f64], nmu: f64, theta: f64, t: f64) -> f64 {
    if t <= 0.0 || init.is_empty() {
        return 0.0;
    }
    // Positions beyond which nothing measurable remains.
    let len = init.iter().rposition(|&p| p > 1e-18).map_or(0, |i| i + 1);
    if len == 0 {
        return 0.0;
    }
    let lam = nmu + len as f64 * theta;
    let chunks = (lam * t / 30.0).ceil().max(1.0);
    let m = lam * t / chunks;
    let mut v = init[..len].to_vec();
    let mut served = 0.0;
    let mut cur = vec![0.0; len];
    let mut next = vec![0.0; len];
    let mut acc = vec![0.0; len];
    for _ in 0..chunks as u64 {
        cur.copy_from_slice(&v);
        let mut cur_served = served;
        let mut term = (-m).exp();
        let mut cum = term;
        acc.iter_mut().zip(&cur).for_each(|(a, c)| *a = term * c);
        let mut acc_served = term * cur_served;
        let mut k = 0.0;
        while cum < 1.0 - 1e-14 && k < 200.0 {
            k += 1.0;
            // One uniformised jump.
            cur_served += cur[0] * nmu / lam;
            for j in 0..len {
                let stay = 1.0 - (nmu + (j as f64 + 1.0) * theta) / lam;
                let from_behind = cur
                    .get(j + 1)
                    .map_or(0.0, |c| c * (nmu + (j as f64 + 1.0) * theta) / lam);
                next[j] = cur[j] * stay + from_behind;
            }
            std::mem::swap(&mut cur, &mut next);
            term *= m / k;
            cum += term;
            acc.iter_mut().zip(&cur).for_each(|(a, c)| *a += term * c);
            acc_served += term * cur_served;
        }
        v.copy_from_slice(&acc);
        served = acc_served;
    }
    served
}

/// Erlang A: the fewest agents answering at least `target` (0..1) of all arriving customers
/// within `within_s` seconds, given mean patience `patience_s`.
///
/// # Errors
/// As [`agents_for_service_level`].
pub fn erlang_a_agents_for_service_level(
    w: &Workload,
    patience_s: f64,
    target: f64,
    within_s: f64,
) -> Result<ErlangA, RouterError> {
    w.validate()?;
    positive("patience_s", patience_s)?;
    fraction("target", target)?;
    non_negative("within_s", within_s)?;
    // Service level rises with staffing: find an upper bound, then bisect.
    let mut lo = 0u32;
    let mut hi = (w.erlangs().ceil() as u32).max(1);
    let mut at_hi = a_metrics(w, hi, patience_s, within_s);
    while at_hi.service_level < target {
        if hi >= MAX_AGENTS {
            return Err(RouterError::Unreachable {
                max_agents: MAX_AGENTS,
            });
        }
        lo = hi;
        hi = hi.saturating_mul(2).min(MAX_AGENTS);
        at_hi = a_metrics(w, hi, patience_s, within_s);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let m = a_metrics(w, mid, patience_s, within_s);
        if m.service_level >= target {
            hi = mid;
            at_hi = m;
        } else {
            lo = mid;
        }
    }
    Ok(at_hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Workload {
        Workload {
            arrivals: 360.0,
            interval_s: 1800.0,
            aht_s: 240.0,
        }
    }

    #[test]
    fn erlang_b_small_values() {
        assert!((erlang_b(1, 1.0) - 0.5).abs() < 1e-12);
        assert!((erlang_b(2, 1.0) - 0.2).abs() < 1e-12);
        assert_eq!(erlang_b(0, 3.0), 1.0);
    }

    /// The known check: 360 calls per 30 minutes, 240 s AHT, 80/20 needs 54 agents.
    #[test]
    fn known_check_360_calls_240s_80_20_needs_54() {
        let w = known();
        assert_eq!(w.erlangs(), 48.0);
        let m = agents_for_service_level(&w, 0.8, 20.0).unwrap();
        assert_eq!(m.agents, 54);
        assert!(m.service_level >= 0.8);
        let below = erlang_c_metrics(&w, 53, 20.0).unwrap();
        assert!(below.service_level < 0.8);
        // At 54 agents: P(wait) = 0.3013, SL = 0.8172, ASA = 12.05 s; at 53, SL = 0.7518.
        assert!((m.p_wait - 0.3013).abs() < 0.0005, "{m:?}");
        assert!((m.service_level - 0.8172).abs() < 0.0005, "{m:?}");
        assert!((m.asa_s - 12.05).abs() < 0.01, "{m:?}");
        assert!((below.service_level - 0.7518).abs() < 0.0005, "{below:?}");
    }

    #[test]
    fn asa_target() {
        let m = agents_for_asa(&known(), 15.0).unwrap();
        assert!(m.asa_s <= 15.0);
        let before = erlang_c_metrics(&known(), m.agents - 1, 0.0).unwrap();
        assert!(before.asa_s > 15.0);
    }

    #[test]
    fn stable_for_thousands_of_agents() {
        let w = Workload {
            arrivals: 180_000.0,
            interval_s: 1800.0,
            aht_s: 300.0,
        };
        assert_eq!(w.erlangs(), 30_000.0);
        let m = agents_for_service_level(&w, 0.9, 10.0).unwrap();
        assert!(m.agents > 30_000 && m.agents < 30_300, "{m:?}");
        assert!(m.p_wait.is_finite() && (0.0..=1.0).contains(&m.p_wait));
        assert!(erlang_b(50_000, 30_000.0) < 1e-100);
    }

    #[test]
    fn unstable_staffing_reports_certain_wait() {
        let m = erlang_c_metrics(&known(), 40, 20.0).unwrap();
        assert_eq!(m.p_wait, 1.0);
        assert_eq!(m.service_level, 0.0);
        assert!(m.asa_s.is_infinite());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut w = known();
        w.aht_s = f64::NAN;
        assert!(matches!(
            erlang_c_metrics(&w, 10, 20.0),
            Err(RouterError::InvalidWorkload { what: "aht_s", .. })
        ));
        assert!(agents_for_service_level(&known(), 1.0, 20.0).is_err());
        assert!(erlang_a_metrics(&known(), 10, 0.0, 20.0).is_err());
        let huge = Workload {
            arrivals: 1e300,
            interval_s: 1.0,
            aht_s: 1e300,
        };
        assert!(agents_for_service_level(&huge, 0.8, 20.0).is_err());
    }

    #[test]
    fn erlang_a_approaches_erlang_c_with_endless_patience() {
        let w = known();
        let c = erlang_c_metrics(&w, 54, 20.0).unwrap();
        let a = erlang_a_metrics(&w, 54, 1e7, 20.0).unwrap();
        assert!((a.p_wait - c.p_wait).abs() < 2e-3, "{a:?} {c:?}");
        assert!(
            (a.service_level - c.service_level).abs() < 2e-3,
            "{a:?} {c:?}"
        );
        assert!((a.asa_s - c.asa_s).abs() < 0.1, "{a:?} {c:?}");
        assert!(a.p_abandon < 1e-4);
    }

    #[test]
    fn erlang_a_copes_with_understaffing() {
        // Fewer agents than erlangs: Erlang C diverges, Erlang A stays finite.
        let a = erlang_a_metrics(&known(), 40, 120.0, 20.0).unwrap();
        assert!(a.p_abandon > 0.1 && a.p_abandon < 0.3, "{a:?}");
        assert!(a.service_level > 0.0 && a.service_level < 0.5, "{a:?}");
        assert!(a.asa_s.is_finite());
        // Abandonment needs no more agents than Erlang C for the same target.
        let need = erlang_a_agents_for_service_level(&known(), 180.0, 0.8, 20.0).unwrap();
        assert!(need.agents <= 54 && need.agents >= 48, "{need:?}");
        assert!(need.service_level >= 0.8);
    }

    #[test]
    fn erlang_a_service_level_matches_a_hand_check() {
        // M/M/1+M with tiny load: nearly everyone is answered at once.
        let w = Workload {
            arrivals: 1.0,
            interval_s: 3600.0,
            aht_s: 60.0,
        };
        // States 0, 1, 2: weights 1, a, a·λ/(μ+θ); a waiter at the head is served within
        // 20 s with probability μ/(μ+θ)·(1 − e^{−(μ+θ)·20}).
        let a = erlang_a_metrics(&w, 1, 60.0, 20.0).unwrap();
        let load = 1.0 / 60.0;
        let (lambda, mu, theta) = (1.0 / 3600.0, 1.0 / 60.0, 1.0 / 60.0);
        let z = 1.0 + load + load * lambda / (mu + theta);
        let head = mu / (mu + theta) * (1.0 - (-(mu + theta) * 20.0f64).exp());
        let hand = 1.0 / z + load / z * head;
        assert!((a.p_wait - (1.0 - 1.0 / z)).abs() < 1e-6, "{a:?}");
        assert!((a.service_level - hand).abs() < 2e-5, "{a:?} vs {hand}");
        // Thousands of agents: with 5 min patience, 8,000 erlangs reach 80/20 with fewer
        // agents than erlangs (abandonment carries the excess, as the fluid model says:
        // abandoned share ≈ (a − n)/a), and the bisection returns the minimum.
        let w = Workload {
            arrivals: 60_000.0,
            interval_s: 1800.0,
            aht_s: 240.0,
        };
        let m = erlang_a_agents_for_service_level(&w, 300.0, 0.8, 20.0).unwrap();
        assert!(m.agents > 7_000 && m.agents < 8_000, "{m:?}");
        let fluid = (8_000.0 - f64::from(m.agents)) / 8_000.0;
        assert!((m.p_abandon - fluid).abs() < 0.005, "{m:?}");
        let fewer = erlang_a_metrics(&w, m.agents - 1, 300.0, 20.0).unwrap();
        assert!(fewer.service_level < 0.8, "{fewer:?}");
    }
}
