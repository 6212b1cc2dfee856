// Unit tests of csrc/common/: the schedule evaluator and the Adam element update, with no torch.
// Values are checked against closed forms written out here in the plainest way.
#include <cmath>
#include <cstdio>
#include <vector>

#include "common/adam_math.h"
#include "common/lr_schedule.h"
#include "common/step_plan.h"

namespace {

int failures = 0;

void check(bool condition, const char* what, int line) {
  if (!condition) {
    std::printf("FAILED line %d: %s\n", line, what);
    ++failures;
  }
}

#define CHECK(cond) check((cond), #cond, __LINE__)

bool close(double a, double b, double rel = 1e-13) {
  return std::fabs(a - b) <= rel * std::fmax(std::fabs(a), std::fabs(b)) + 1e-300;
}

double lr_at(const std::vector<double>& program, int64_t t) { return lrfused::evaluate_schedule(program.data(), t).lr; }

void test_leaves() {
  using namespace lrfused;
  CHECK(lr_at({kConstant, 3, 0.5}, 123) == 0.5);
  const std::vector<double> step{kStep, 5, 2.0, 3, 0.5};
  CHECK(lr_at(step, 2) == 2.0 && lr_at(step, 3) == 1.0 && lr_at(step, 7) == 0.5);
  const std::vector<double> multistep{kMultiStep, 7, 1.0, 0.1, 3, 2, 2, 5};
  CHECK(lr_at(multistep, 1) == 1.0 && close(lr_at(multistep, 2), 0.01) && close(lr_at(multistep, 5), 0.001));
  const std::vector<double> cosine{kCosine, 6, 1.0, 0.1, 10, 0};
  CHECK(close(lr_at(cosine, 5), 0.55) && close(lr_at(cosine, 10), 0.1) && close(lr_at(cosine, 20), 1.0));
  const std::vector<double> clamped{kCosine, 6, 1.0, 0.1, 10, 1};
  CHECK(close(lr_at(clamped, 20), 0.1));
  const std::vector<double> restarts{kWarmRestarts, 6, 1.0, 0.0, 3, 3};
  // Cycles 3, 9, 27, 81, 243: t = 363 is the first step of the sixth cycle.
  CHECK(close(lr_at(restarts, 363), 1.0) && close(lr_at(restarts, 362), 0.5 * (1 + std::cos(kPi * 242 / 243))));
  const std::vector<double> table{kTable, 7, 10, 3, 1.0, 2.0, 3.0};
  CHECK(lr_at(table, 11) == 2.0 && std::isnan(lr_at(table, 9)) && std::isnan(lr_at(table, 13)));
  const std::vector<double> ramp{kExpRamp, 5, 1e-6, 1.0, 7};
  CHECK(close(lr_at(ramp, 3), 1e-3, 1e-12) && close(lr_at(ramp, 100), 1.0));
}

void test_cycles_and_beta1() {
  using namespace lrfused;
  // triangular, total 4 (up 2), momentum 0.8 .. 0.9
  const std::vector<double> cyclic{kCyclic, 11, 0.1, 0.5, 4, 0.5, kTriangular, 1.0, 0.8, 0.9, 1};
  const ScheduleValue top = evaluate_schedule(cyclic.data(), 2);
  CHECK(close(top.lr, 0.5) && close(top.beta1, 0.8));
  CHECK(close(evaluate_schedule(cyclic.data(), 4).lr, 0.1));
  const std::vector<double> one_cycle{kOneCycle, 12, 0.04, 1.0, 4e-6, 100, 0.3, 0, 1, 1, 0.85, 0.95};
  const ScheduleValue peak = evaluate_schedule(one_cycle.data(), 29);
  CHECK(close(peak.lr, 1.0) && close(peak.beta1, 0.85));
  const ScheduleValue start = evaluate_schedule(one_cycle.data(), 0);
  CHECK(close(start.lr, 0.04) && close(start.beta1, 0.95));
  CHECK(std::isnan(evaluate_schedule(std::vector<double>{kConstant, 3, 1.0}.data(), 0).beta1));
}

void test_composites() {
  using namespace lrfused;
  // join([constant 1, step(2, every 1, gamma .5)], [3]): the second restarts at its own t = 0.
  const std::vector<double> sequential{kSequential, 12, 2, 3, kConstant, 3, 1.0, kStep, 5, 2.0, 1, 0.5};
  CHECK(lr_at(sequential, 2) == 1.0 && lr_at(sequential, 3) == 2.0 && lr_at(sequential, 5) == 0.5);
  const std::vector<double> product{kProduct, 10, 3.0, 2, kConstant, 3, 0.5, kConstant, 3, 0.25};
  CHECK(close(lr_at(product, 0), 0.375));
  CHECK(validate_schedule(sequential.data(), static_cast<int64_t>(sequential.size())) == nullptr);
  CHECK(validate_schedule(product.data(), static_cast<int64_t>(product.size())) == nullptr);
}

void test_validation() {
  using namespace lrfused;
  const std::vector<double> unknown{99, 3, 1.0};
  CHECK(validate_schedule(unknown.data(), 3) != nullptr);
  const std::vector<double> too_long{kConstant, 9, 1.0};
  CHECK(validate_schedule(too_long.data(), 3) != nullptr);
  const std::vector<double> short_step{kStep, 4, 1.0, 2};
  CHECK(validate_schedule(short_step.data(), 4) != nullptr);
  const std::vector<double> bad_table{kTable, 5, 0, 4, 1.0};  // claims 4 values, holds 1
  CHECK(validate_schedule(bad_table.data(), 5) != nullptr);
}

void test_adam_element() {
  using namespace lrfused;
  // One Adam step from zero moments: m = 0.1 g, v = 0.001 g^2, the update is -lr * sign(g) (nearly).
  const AdamScalars<float> s = scalars_as<float>(make_adam_scalars(0.01, 0.9, 0.999, 1e-8, 0.0, 1));
  float p = 1.0f, m = 0.0f, v = 0.0f, vmax = 0.0f;
  adam_update<float, float, false, false>(p, 2.0f, m, v, vmax, s, false, false);
  CHECK(std::fabs(m - 0.2f) < 1e-7f && std::fabs(v - 0.004f) < 1e-9f);
  CHECK(std::fabs(p - 0.99f) < 1e-6f);
  // maximize flips the direction; AdamW decays the parameter by 1 - lr * wd first.
  const AdamScalars<float> w = scalars_as<float>(make_adam_scalars(0.01, 0.9, 0.999, 1e-8, 0.5, 1));
  float q = 1.0f, mq = 0.0f, vq = 0.0f, xq = 0.0f;
  adam_update<float, float, true, true>(q, 2.0f, mq, vq, xq, w, true, true);
  CHECK(std::fabs(q - (1.0f * 0.995f + 0.01f)) < 1e-6f && xq == vq);
}

// The other rules' elements, by hand (their order of operations is checked against torch by
// tests/test_other_rules.py; here, without torch, their branches and scalars).
void test_other_rule_elements() {
  using namespace lrfused;
  // SGD: the buffer's first step is the grad itself; later ones decay it; Nesterov looks ahead.
  const SgdScalars<float> sgd = scalars_as<float>(make_sgd_scalars(0.1, 0.9, 0.5, 0.0));
  float p = 1.0f, buffer = 123.0f;
  sgd_update<float, float, true, false>(p, 2.0f, buffer, sgd, false, false, /*first_step=*/true);
  CHECK(buffer == 2.0f && std::fabs(p - 0.8f) < 1e-7f);
  sgd_update<float, float, true, true>(p, 2.0f, buffer, sgd, false, false, false);
  CHECK(std::fabs(buffer - (2.0f * 0.9f + 1.0f)) < 1e-6f);             // 0.9 b + (1 - 0.5) g
  CHECK(std::fabs(p - (0.8f - 0.1f * (2.0f + 0.9f * 2.8f))) < 1e-6f);  // g + momentum * b
  // RMSprop, centered: the variance is v - m^2, with m and v their running averages.
  const RmspropScalars<double> rms = make_rmsprop_scalars(0.01, 0.0, 0.5, 0.0, 0.0);
  double q = 1.0, square_avg = 0.0, unused = 0.0, grad_avg = 0.0;
  rmsprop_update<double, double, true, false>(q, 2.0, square_avg, unused, grad_avg, rms, false, false);
  CHECK(square_avg == 2.0 && grad_avg == 1.0 && std::fabs(q - (1.0 - 0.01 * 2.0 / 1.0)) < 1e-15);
  // Adagrad: the lr decays as lr / (1 + (step - 1) lr_decay); maximize climbs.
  const AdagradScalars<double> ada = make_adagrad_scalars(0.1, 0.5, 0.0, 0.0, 3);
  CHECK(close(ada.neg_clr, -0.05));
  double r = 0.0, sum = 0.0;
  adagrad_update<double, double>(r, 3.0, sum, ada, /*maximize=*/true, false);
  CHECK(sum == 9.0 && close(r, 0.05));
  // rule_scalars: SGD's first step is its counter at 0; an unusable lr is told for every rule.
  CHECK(rule_scalars(UpdateRuleKind::kSgd, ScheduleValue{0.1, schedule_nan()}, 0.9, 0.0, 0.0, 0.0, 0).first_step);
  CHECK(!rule_scalars(UpdateRuleKind::kAdagrad, ScheduleValue{schedule_nan(), schedule_nan()}, 0, 0, 0, 0, 4).usable);
  CHECK(rule_has_state(UpdateRuleKind::kRmsprop, kFlagCentered, 2) &&
        !rule_has_state(UpdateRuleKind::kRmsprop, kFlagCentered, 1));
}

}  // namespace

// Deferred scheduler steps (note [One op per step]): two CHAIN steps of an exponential decay by 0.5
// for group 0 and a SET to a constant for group 1, the second of them applied already.
void test_deferred_steps() {
  using namespace lrfused;
  std::vector<double> words{kHeld, 4, 0.8, schedule_nan(), kHeld, 4, 0.3, 0.9};
  // Indexed rules: group 0's node at 0, group 1's at 6 (after the 6 words of group 0's CHAIN).
  const std::vector<double> rules{0, 6, kRuleChain, 6, kExponential, 4, 1.0, 0.5, kRuleSet, 5, kConstant, 3, 0.25};
  int64_t clock = 4, applied = 10;
  DeferredSteps d{};
  d.count = 2;
  d.clock_count = 1;
  d.first_sequence = 9;  // step 0 is number 9 (applied: 10 > 9, skipped), step 1 is number 10
  d.group_count = 2;
  d.applied = &applied;
  d.words = words.data();
  d.rules[0] = d.rules[1] = rules.data();
  d.clock_slot[0] = d.clock_slot[1] = 0;
  d.clocks[0] = &clock;
  const HeldValue first = held_after(d, 0), second = held_after(d, 1);
  CHECK(close(first.lr, 0.4) && schedule_is_nan(first.beta1));  // one step applied, not two
  CHECK(second.lr == 0.25 && second.beta1 == 0.9);
  commit_clocks(d);
  CHECK(clock == 5 && applied == 11);
  d.first_sequence = 11;  // nothing deferred after applied: count 0 leaves everything
  d.count = 0;
  CHECK(held_after(d, 0).lr == 0.8);
  commit_clocks(d);
  CHECK(clock == 5 && applied == 11);
}

int main() {
  test_leaves();
  test_cycles_and_beta1();
  test_composites();
  test_validation();
  test_adam_element();
  test_other_rule_elements();
  test_deferred_steps();
  if (failures == 0) std::printf("all common tests passed\n");
  return failures == 0 ? 0 : 1;
}
