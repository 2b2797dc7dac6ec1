#include "server/observer.h"

#include <cmath>

#include "gtest/gtest.h"

namespace gstab {
namespace {

v1::StepResponse Step(uint64_t step, std::vector<double> norms, std::vector<bool> spikes) {
  v1::StepResponse r;
  r.set_step(step);
  for (size_t i = 0; i < norms.size(); ++i) {
    v1::GroupResult* g = r.add_groups();
    g->set_group("g" + std::to_string(i));
    g->set_norm(norms[i]);
    g->set_stabilized_norm(norms[i] / 2);
    g->set_scale(0.5);
    g->set_spike(spikes[i]);
    g->set_skipped(!std::isfinite(norms[i]));
    g->set_z(spikes[i] ? 9.0 : 0.5);
  }
  r.set_skip(!std::isfinite(norms[0]) || !std::isfinite(norms.back()));
  return r;
}

// gstabd zeroes every group of a skipped step (stabilized norm 0): the aggregate beyond the cap
// is scaled by 0 then, like each exported group, whatever its norm.
TEST(ObserverTest, TheAggregatesScaleIsZeroWhenItsGradientsWereZeroed) {
  MetricsRegistry registry;
  EventBus bus;
  Observer observer(&registry, &bus, /*max_groups=*/1);
  observer.OnAttach("j", 0, false);
  v1::StepResponse skipped = Step(1, {1, 2, NAN}, {false, false, false});
  for (v1::GroupResult& g : *skipped.mutable_groups()) {
    g.set_stabilized_norm(0);
    g.set_scale(0);
  }
  observer.OnStep("j", skipped, absl::Milliseconds(1));
  std::string text = registry.Render();
  EXPECT_NE(text.find("gstab_scale{job=\"j\",group=\"g0\"} 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("gstab_scale{job=\"j\",group=\"_other\"} 0\n"), std::string::npos) << text;
  observer.OnStep("j", Step(2, {1, 3, 4}, {false, false, false}), absl::Milliseconds(1));
  text = registry.Render();
  EXPECT_NE(text.find("gstab_scale{job=\"j\",group=\"_other\"} 0.5\n"), std::string::npos) << text;
}

TEST(ObserverTest, GroupsBeyondTheCapAreAggregatedAndCountersFollowSteps) {
  MetricsRegistry registry;
  EventBus bus;
  Observer observer(&registry, &bus, /*max_groups=*/2);
  observer.OnAttach("j", 0, false);
  observer.OnStep("j", Step(1, {3, 4, 6, 8}, {false, false, false, false}), absl::Milliseconds(2));
  observer.OnStep("j", Step(2, {1, 1, 1, NAN}, {true, true, false, false}), absl::Milliseconds(3));
  const std::string text = registry.Render();
  EXPECT_NE(text.find("gstab_norm{job=\"j\",group=\"g0\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("gstab_norm{job=\"j\",group=\"g1\"} 1\n"), std::string::npos);
  EXPECT_EQ(text.find("group=\"g2\""), std::string::npos);  // beyond the cap
  EXPECT_NE(text.find("gstab_norm{job=\"j\",group=\"_other\"} NaN\n"), std::string::npos);
  EXPECT_NE(text.find("gstab_scale{job=\"j\",group=\"_other\"} NaN\n"), std::string::npos);
  EXPECT_NE(text.find("gstab_steps_total{job=\"j\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("gstab_skipped_steps_total{job=\"j\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("gstab_spikes_total{job=\"j\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("gstab_non_finite_norms_total{job=\"j\"} 1\n"), std::string::npos);
  // The histogram holds only the finite first step (norm sqrt(9+16+36+64)).
  EXPECT_NE(text.find("gstab_job_norm_distribution_count{job=\"j\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("gstab_job_norm_distribution_sum{job=\"j\"} 11.180339887498949\n"),
            std::string::npos)
      << text;

  auto sub = bus.Subscribe("j", 100);
  std::vector<v1::EventType> types;
  v1::Event e;
  while (sub->Next(&e, absl::ZeroDuration()) == EventBus::Subscription::Result::kEvent) {
    types.push_back(e.type());
    if (e.type() == v1::EVENT_TYPE_SPIKE) {
      EXPECT_EQ(e.step(), 2u);
      EXPECT_EQ(e.groups_size(), 2);
      EXPECT_EQ(e.z(), 9.0);
    }
    if (e.type() == v1::EVENT_TYPE_SKIP) {
      EXPECT_EQ(e.z(), 0.5);  // the skipped group's, not the spiking ones' 9
    }
  }
  EXPECT_EQ(types, (std::vector<v1::EventType>{v1::EVENT_TYPE_ATTACH, v1::EVENT_TYPE_SPIKE,
                                               v1::EVENT_TYPE_SKIP}));

  v1::JobSummary summary;
  observer.Summarize("j", 10, &summary);
  EXPECT_EQ(summary.recent_norms_size(), 2);
  EXPECT_EQ(summary.spike_steps(), 1u);
  EXPECT_EQ(summary.skipped_steps(), 1u);
}

// A step with a non-finite group is skipped whole (its finite groups with it): its SKIP event
// names the non-finite groups, and only they count as non-finite norms.
TEST(ObserverTest, ASkipNamesTheNonFiniteGroupsNotThoseSkippedWithThem) {
  MetricsRegistry registry;
  EventBus bus;
  Observer observer(&registry, &bus, /*max_groups=*/8);
  observer.OnAttach("j", 0, false);
  v1::StepResponse step = Step(1, {1, NAN, 2}, {false, false, false});
  for (v1::GroupResult& g : *step.mutable_groups()) g.set_skipped(true);
  step.set_skip(true);
  observer.OnStep("j", step, absl::Milliseconds(1));
  EXPECT_NE(registry.Render().find("gstab_non_finite_norms_total{job=\"j\"} 1\n"),
            std::string::npos);
  auto sub = bus.Subscribe("j", 100);
  v1::Event e;
  int skips = 0;
  while (sub->Next(&e, absl::ZeroDuration()) == EventBus::Subscription::Result::kEvent) {
    if (e.type() != v1::EVENT_TYPE_SKIP) continue;
    ++skips;
    ASSERT_EQ(e.groups_size(), 1);
    EXPECT_EQ(e.groups(0), "g1");
  }
  EXPECT_EQ(skips, 1);
}

// A CUDA step voided on the GPU (a node lost, the all-reduce aborted) applied nothing and
// measured nothing: counted apart, and a SKIP event with its reason; neither a skip for non-finite
// gradients (no alert of one) nor a non-finite norm, and the job's norms, histogram and
// divergence stay as the last step that ran left them.
TEST(ObserverTest, AStepThatAppliedNothingIsASkipAndNoNonFiniteNorm) {
  MetricsRegistry registry;
  EventBus bus;
  Observer observer(&registry, &bus);
  observer.OnAttach("j", 0, false);
  v1::StepResponse ran = Step(1, {3, 4}, {false, false});
  ran.set_diverging(true);
  observer.OnStep("j", ran, std::nullopt);
  v1::StepResponse voided = Step(2, {NAN, NAN}, {false, false});
  voided.set_results_step(2);
  voided.set_not_applied("the step was voided on the GPU");
  observer.OnStep("j", voided, std::nullopt);
  const std::string text = registry.Render();
  EXPECT_NE(text.find("gstab_steps_total{job=\"j\"} 2\n"), std::string::npos) << text;
  // Not a skip for NaN/Inf gradients: GstabNonFiniteGradients alerts on those.
  EXPECT_NE(text.find("gstab_skipped_steps_total{job=\"j\"} 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("gstab_not_applied_steps_total{job=\"j\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("gstab_non_finite_norms_total{job=\"j\"} 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("gstab_norm{job=\"j\",group=\"g1\"} 4\n"), std::string::npos) << text;
  EXPECT_NE(text.find("gstab_job_norm{job=\"j\"} 5\n"), std::string::npos) << text;
  EXPECT_NE(text.find("gstab_job_norm_distribution_count{job=\"j\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("gstab_diverging{job=\"j\"} 1\n"), std::string::npos) << text;
  auto sub = bus.Subscribe("j", 100, /*live=*/false);
  std::vector<v1::EventType> types;
  v1::Event e;
  while (sub->Next(&e, absl::ZeroDuration()) == EventBus::Subscription::Result::kEvent) {
    types.push_back(e.type());
    if (e.type() == v1::EVENT_TYPE_SKIP) {
      EXPECT_EQ(e.step(), 2u);
      EXPECT_EQ(e.groups_size(), 0);
      EXPECT_EQ(e.detail(), "nothing applied: the step was voided on the GPU");
    }
  }
  EXPECT_EQ(types,
            (std::vector<v1::EventType>{v1::EVENT_TYPE_ATTACH, v1::EVENT_TYPE_DIVERGENCE_START,
                                        v1::EVENT_TYPE_SKIP}));
  v1::JobSummary summary;
  observer.Summarize("j", 10, &summary);
  EXPECT_EQ(summary.skipped_steps(), 0u);
  EXPECT_EQ(summary.recent_norms_size(), 1);
  EXPECT_EQ(summary.last_norm(), 5);
  EXPECT_TRUE(summary.diverging());
}

// A step where thousands of groups spike makes one event of bounded size: the first 64 groups
// are named, the rest counted.
TEST(ObserverTest, AnEventNamesAtMost64GroupsAndCountsTheRest) {
  MetricsRegistry registry;
  EventBus bus;
  Observer observer(&registry, &bus, /*max_groups=*/2);
  observer.OnStep("j", Step(1, std::vector<double>(1000, 1.0), std::vector<bool>(1000, true)),
                  std::nullopt);
  auto sub = bus.Subscribe("j", 100);
  v1::Event e;
  ASSERT_EQ(sub->Next(&e, absl::ZeroDuration()), EventBus::Subscription::Result::kEvent);
  EXPECT_EQ(e.type(), v1::EVENT_TYPE_SPIKE);
  EXPECT_EQ(e.groups_size(), 64);
  EXPECT_EQ(e.groups(0), "g0");
  EXPECT_EQ(e.more_groups(), 936u);
  // Not timed (a CUDA step): the duration histogram has no observation.
  EXPECT_EQ(registry.Render().find("gstab_step_duration_seconds_count{job=\"j\"} 1"),
            std::string::npos)
      << registry.Render();
}

// A registration without some groups since: their series leave /metrics rather than standing
// still at their last values, as the aggregate does once no group is past the cap.
TEST(ObserverTest, GroupsAStepNoLongerHasLeaveTheMetrics) {
  MetricsRegistry registry;
  EventBus bus;
  Observer observer(&registry, &bus, /*max_groups=*/2);
  observer.OnStep("j", Step(1, {1, 2, 3}, {false, false, false}), absl::Milliseconds(1));
  std::string text = registry.Render();
  EXPECT_NE(text.find("gstab_norm{job=\"j\",group=\"g1\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("group=\"_other\""), std::string::npos) << text;
  observer.OnStep("j", Step(2, {5}, {false}), absl::Milliseconds(1));
  text = registry.Render();
  EXPECT_NE(text.find("gstab_norm{job=\"j\",group=\"g0\"} 5\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("group=\"g1\""), std::string::npos) << text;
  EXPECT_EQ(text.find("group=\"_other\""), std::string::npos) << text;
  observer.OnStep("j", Step(3, {5, 6}, {false, false}), absl::Milliseconds(1));
  EXPECT_NE(registry.Render().find("gstab_norm{job=\"j\",group=\"g1\"} 6\n"), std::string::npos);
  // Renamed groups (a wrapper's prefix, say) take the places of those gone.
  v1::StepResponse renamed = Step(4, {7, 8, 9}, {false, false, false});
  for (v1::GroupResult& g : *renamed.mutable_groups()) g.set_group("module." + g.group());
  observer.OnStep("j", renamed, absl::Milliseconds(1));
  text = registry.Render();
  EXPECT_NE(text.find("gstab_norm{job=\"j\",group=\"module.g0\"} 7\n"), std::string::npos) << text;
  EXPECT_NE(text.find("gstab_norm{job=\"j\",group=\"module.g1\"} 8\n"), std::string::npos);
  EXPECT_NE(text.find("gstab_norm{job=\"j\",group=\"_other\"} 9\n"), std::string::npos);
  EXPECT_EQ(text.find("group=\"g0\""), std::string::npos);
}

// A job restored diverging (after gstabd's restart, or its retirement) is shown diverging from
// its attach, and its recovery is an event; one restored calm that diverges is one too, once.
TEST(ObserverTest, ARestoredJobsDivergenceIsSeededFromItsState) {
  MetricsRegistry registry;
  EventBus bus;
  Observer observer(&registry, &bus);
  observer.Seed("j", /*diverging=*/true);
  EXPECT_NE(registry.Render().find("gstab_diverging{job=\"j\"} 1\n"), std::string::npos);
  v1::JobSummary summary;
  observer.Summarize("j", 0, &summary);
  EXPECT_TRUE(summary.diverging());
  v1::StepResponse still = Step(10, {1}, {false});
  still.set_diverging(true);
  observer.OnStep("j", still, absl::Milliseconds(1));  // no second DIVERGENCE_START
  observer.Seed("j", /*diverging=*/false);             // known: its own record stands
  observer.OnStep("j", Step(11, {1}, {false}), absl::Milliseconds(1));
  auto sub = bus.Subscribe("j", 100, /*live=*/false);
  std::vector<v1::EventType> types;
  v1::Event e;
  while (sub->Next(&e, absl::ZeroDuration()) == EventBus::Subscription::Result::kEvent) {
    types.push_back(e.type());
  }
  EXPECT_EQ(types, std::vector<v1::EventType>{v1::EVENT_TYPE_DIVERGENCE_END});
}

// The events of `job` published so far (history), in order.
std::vector<v1::Event> Events(EventBus& bus, const std::string& job) {
  auto sub = bus.Subscribe(job, 100, /*live=*/false);
  std::vector<v1::Event> events;
  v1::Event e;
  while (sub->Next(&e, absl::ZeroDuration()) == EventBus::Subscription::Result::kEvent) {
    events.push_back(e);
  }
  return events;
}

// A step that runs with a configuration this node is changing, before the change is announced,
// is not taken for node 0's: one CONFIG_CHANGE, the change's own. A newer version no change
// here announced is node 0's.
TEST(ObserverTest, AStepAheadOfItsChangesAnnouncementIsNotTakenForNode0s) {
  MetricsRegistry registry;
  EventBus bus;
  Observer observer(&registry, &bus);
  v1::StepResponse step = Step(1, {1}, {false});
  step.set_config_version(1);
  observer.OnStep("j", step, absl::Milliseconds(1));
  observer.ConfigChangeComing("j");
  step = Step(2, {1}, {false});
  step.set_config_version(2);
  observer.OnStep("j", step, absl::Milliseconds(1));
  observer.OnConfigChange("j", 2, "stabilizer", "beta1 0.8");
  observer.ConfigChangeDone("j");
  std::vector<v1::Event> events = Events(bus, "j");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].type(), v1::EVENT_TYPE_CONFIG_CHANGE);
  EXPECT_NE(events[0].detail().find("beta1 0.8"), std::string::npos) << events[0].detail();

  step = Step(3, {1}, {false});
  step.set_config_version(3);
  observer.OnStep("j", step, absl::Milliseconds(1));
  events = Events(bus, "j");
  ASSERT_EQ(events.size(), 2u);
  EXPECT_NE(events[1].detail().find("node 0's, taken by this node"), std::string::npos)
      << events[1].detail();

  // A change here that is refused (a node other than 0 may not change the job) while node 0's
  // comes: node 0's is announced once the change is done.
  observer.ConfigChangeComing("j");
  step = Step(4, {1}, {false});
  step.set_config_version(4);
  observer.OnStep("j", step, absl::Milliseconds(1));
  EXPECT_EQ(Events(bus, "j").size(), 2u);
  observer.ConfigChangeDone("j");
  events = Events(bus, "j");
  ASSERT_EQ(events.size(), 3u);
  EXPECT_NE(events[2].detail().find("version 4 from step 4 on: node 0's"), std::string::npos)
      << events[2].detail();
}

// A retired job's step reported late (a GPU's, collected before the retirement) brings none of
// its series back; after the job's next attach its steps count again.
TEST(ObserverTest, AStepReportedAfterItsJobsRetirementIsDropped) {
  MetricsRegistry registry;
  EventBus bus;
  Observer observer(&registry, &bus);
  observer.OnAttach("j", 0, false);
  observer.OnStep("j", Step(1, {1}, {false}), absl::Milliseconds(1));
  observer.OnRetire("j", "idle");
  observer.OnStep("j", Step(2, {1}, {false}), absl::Milliseconds(1));
  EXPECT_EQ(registry.Render().find("job=\"j\""), std::string::npos) << registry.Render();
  v1::JobSummary summary;
  observer.Summarize("j", 10, &summary);
  EXPECT_EQ(summary.recent_norms_size(), 0);

  observer.OnAttach("j", 0, false);
  observer.OnStep("j", Step(3, {1}, {false}), absl::Milliseconds(1));
  EXPECT_NE(registry.Render().find("gstab_steps_total{job=\"j\"} 1\n"), std::string::npos)
      << registry.Render();
}

}  // namespace
}  // namespace gstab
