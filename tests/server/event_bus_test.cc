#include "server/event_bus.h"

#include <vector>

#include "gtest/gtest.h"

namespace gstab {
namespace {

v1::Event Spike(const std::string& job, uint64_t step) {
  v1::Event e;
  e.set_type(v1::EVENT_TYPE_SPIKE);
  e.set_job(job);
  e.set_step(step);
  return e;
}

TEST(EventBusTest, SlowSubscriberLosesTheOldestAndIsToldHowMany) {
  EventBus bus(/*capacity=*/4, /*history=*/16);
  auto sub = bus.Subscribe("", 0);
  for (uint64_t s = 1; s <= 10; ++s) bus.Publish(Spike("j", s));  // never blocks
  v1::Event e;
  ASSERT_EQ(sub->Next(&e, absl::ZeroDuration()), EventBus::Subscription::Result::kEvent);
  EXPECT_EQ(e.step(), 7u);
  EXPECT_EQ(e.dropped_before(), 6u);
  for (uint64_t s = 8; s <= 10; ++s) {
    ASSERT_EQ(sub->Next(&e, absl::ZeroDuration()), EventBus::Subscription::Result::kEvent);
    EXPECT_EQ(e.step(), s);
    EXPECT_EQ(e.dropped_before(), 0u);
    EXPECT_EQ(e.sequence(), s);
    EXPECT_GT(e.wall_time_unix_nanos(), 0);
  }
  EXPECT_EQ(sub->Next(&e, absl::Milliseconds(10)), EventBus::Subscription::Result::kTimeout);
}

// Large events (many groups named) fill a slow subscriber's queue by its bytes before its count:
// it holds the newest that fit, and the next event read says how many went.
TEST(EventBusTest, ASlowSubscribersQueueIsBoundedInBytesToo) {
  EventBus bus(/*capacity=*/1024, /*per_job=*/16, /*total=*/16, /*max_queue_bytes=*/100000);
  auto sub = bus.Subscribe("", 0);
  for (uint64_t s = 1; s <= 50; ++s) {
    v1::Event e = Spike("j", s);
    for (int g = 0; g < 64; ++g) e.add_groups(std::string(150, static_cast<char>('a' + g % 26)));
    bus.Publish(std::move(e));
  }
  v1::Event e;
  ASSERT_EQ(sub->Next(&e, absl::ZeroDuration()), EventBus::Subscription::Result::kEvent);
  const uint64_t first = e.step();
  EXPECT_GT(first, 40u);  // at most ten of ~10 KB fit
  EXPECT_EQ(e.dropped_before(), first - 1);
  uint64_t read = 1;
  while (sub->Next(&e, absl::ZeroDuration()) == EventBus::Subscription::Result::kEvent) {
    EXPECT_EQ(e.step(), first + read++);
    EXPECT_EQ(e.dropped_before(), 0u);
  }
  EXPECT_EQ(first + read - 1, 50u);  // the newest is kept
  // A new reader asking for more history than its budget holds gets the newest, and is not told
  // it was too slow.
  auto late = bus.Subscribe("", 50, /*live=*/false);
  ASSERT_EQ(late->Next(&e, absl::ZeroDuration()), EventBus::Subscription::Result::kEvent);
  EXPECT_GT(e.step(), 40u);
  EXPECT_EQ(e.dropped_before(), 0u);
  // One event larger than the whole budget is still delivered.
  v1::Event huge = Spike("j", 51);
  huge.set_detail(std::string(200000, 'x'));
  bus.Publish(std::move(huge));
  ASSERT_EQ(sub->Next(&e, absl::ZeroDuration()), EventBus::Subscription::Result::kEvent);
  EXPECT_EQ(e.step(), 51u);
}

TEST(EventBusTest, JobFilterRecentHistoryAndClose) {
  EventBus bus(8, /*per_job=*/2);
  bus.Publish(Spike("a", 1));
  bus.Publish(Spike("b", 2));
  bus.Publish(Spike("a", 3));
  bus.Publish(Spike("a", 4));
  auto sub = bus.Subscribe("a", 10);  // history keeps a's last 2: a3, a4
  v1::Event e;
  ASSERT_EQ(sub->Next(&e, absl::ZeroDuration()), EventBus::Subscription::Result::kEvent);
  EXPECT_EQ(e.step(), 3u);
  ASSERT_EQ(sub->Next(&e, absl::ZeroDuration()), EventBus::Subscription::Result::kEvent);
  EXPECT_EQ(e.step(), 4u);
  bus.Publish(Spike("b", 5));
  bus.Publish(Spike("a", 6));
  ASSERT_EQ(sub->Next(&e, absl::ZeroDuration()), EventBus::Subscription::Result::kEvent);
  EXPECT_EQ(e.step(), 6u);
  bus.Close();
  EXPECT_EQ(sub->Next(&e, absl::Seconds(5)), EventBus::Subscription::Result::kClosed);
}

// `gstabctl events` without --follow: the recent events and then the end, however many are
// published before the caller has read them.
TEST(EventBusTest, ASubscriptionThatIsNotLiveEndsAfterTheRecentEvents) {
  EventBus bus(8, 8);
  bus.Publish(Spike("a", 1));
  bus.Publish(Spike("a", 2));
  auto sub = bus.Subscribe("a", 10, /*live=*/false);
  bus.Publish(Spike("a", 3));
  v1::Event e;
  ASSERT_EQ(sub->Next(&e, absl::ZeroDuration()), EventBus::Subscription::Result::kEvent);
  EXPECT_EQ(e.step(), 1u);
  bus.Publish(Spike("a", 4));
  ASSERT_EQ(sub->Next(&e, absl::ZeroDuration()), EventBus::Subscription::Result::kEvent);
  EXPECT_EQ(e.step(), 2u);
  EXPECT_EQ(sub->Next(&e, absl::ZeroDuration()), EventBus::Subscription::Result::kClosed);
  bus.Unsubscribe(sub);  // as the service does; not subscribed, so nothing to remove
}

// Asking for more recent events than a subscriber's queue holds gives the newest it holds, not
// a report of events dropped for a slow reader (the history can hold more than the queue: twice
// over, sessions' and the others').
TEST(EventBusTest, MoreRecentEventsThanTheQueueHoldsGivesTheNewestWithoutDrops) {
  EventBus bus(/*capacity=*/4, /*per_job=*/16, /*total=*/16);
  for (uint64_t s = 1; s <= 10; ++s) bus.Publish(Spike("j", s));
  auto sub = bus.Subscribe("", 100, /*live=*/false);
  v1::Event e;
  for (uint64_t s = 7; s <= 10; ++s) {
    ASSERT_EQ(sub->Next(&e, absl::ZeroDuration()), EventBus::Subscription::Result::kEvent);
    EXPECT_EQ(e.step(), s);
    EXPECT_EQ(e.dropped_before(), 0u);
  }
  EXPECT_EQ(sub->Next(&e, absl::ZeroDuration()), EventBus::Subscription::Result::kClosed);
}

// A live subscriber's past events fill half its queue at most: the events published before it
// reads anything find room, and it is not told it was too slow (it had not read yet). In bytes
// too.
TEST(EventBusTest, ALiveSubscribersPastEventsLeaveRoomForNewOnes) {
  for (const bool by_bytes : {false, true}) {
    auto stamped = [](uint64_t step) {  // every one of the same size
      v1::Event e = Spike("j", step);
      e.set_wall_time_unix_nanos(1);
      return e;
    };
    v1::Event sized = stamped(12);
    sized.set_sequence(12);
    EventBus bus(/*capacity=*/8, /*per_job=*/16, /*total=*/16,
                 /*max_queue_bytes=*/by_bytes ? 4 * sized.ByteSizeLong() : 1 << 20);
    for (uint64_t s = 1; s <= 10; ++s) bus.Publish(stamped(s));
    auto sub = bus.Subscribe("", 100);
    for (uint64_t s = 11; s <= 12; ++s) bus.Publish(stamped(s));
    v1::Event e;
    const uint64_t first = by_bytes ? 9 : 7;  // the newest 2 (half the bytes) or 4 (half of 8)
    for (uint64_t s = first; s <= 12; ++s) {
      ASSERT_EQ(sub->Next(&e, absl::ZeroDuration()), EventBus::Subscription::Result::kEvent)
          << "by bytes " << by_bytes << " step " << s;
      EXPECT_EQ(e.step(), s) << "by bytes " << by_bytes;
      EXPECT_EQ(e.dropped_before(), 0u) << "by bytes " << by_bytes << " step " << s;
    }
    EXPECT_EQ(sub->Next(&e, absl::ZeroDuration()), EventBus::Subscription::Result::kTimeout);
    bus.Unsubscribe(sub);
  }
}

// Sessions coming and going (an operator's `gstabctl config show` in a loop) must not push the
// job's spikes out of the history; what a subscriber gets is both, in the order published.
TEST(EventBusTest, SessionsComingAndGoingKeepTheSpikesInTheHistory) {
  EventBus bus(/*capacity=*/64, /*per_job=*/8);
  bus.Publish(Spike("j", 1));
  for (int i = 0; i < 100; ++i) {
    v1::Event e;
    e.set_type(i % 2 == 0 ? v1::EVENT_TYPE_ATTACH : v1::EVENT_TYPE_DETACH);
    e.set_job("j");
    bus.Publish(e);
    if (i == 50) bus.Publish(Spike("j", 2));
  }
  auto sub = bus.Subscribe("j", 64, /*live=*/false);
  std::vector<v1::Event> got;
  for (v1::Event e;
       sub->Next(&e, absl::ZeroDuration()) == EventBus::Subscription::Result::kEvent;) {
    got.push_back(e);
  }
  ASSERT_EQ(got.size(), 10u);  // 2 spikes, and the last 8 sessions' events
  EXPECT_EQ(got[0].type(), v1::EVENT_TYPE_SPIKE);
  EXPECT_EQ(got[0].step(), 1u);
  EXPECT_EQ(got[1].type(), v1::EVENT_TYPE_SPIKE);
  EXPECT_EQ(got[1].step(), 2u);
  for (size_t i = 1; i < got.size(); ++i) EXPECT_GT(got[i].sequence(), got[i - 1].sequence());
  auto newest = bus.Subscribe("j", 3, /*live=*/false);  // the newest 3, whatever their kind
  v1::Event e;
  ASSERT_EQ(newest->Next(&e, absl::ZeroDuration()), EventBus::Subscription::Result::kEvent);
  EXPECT_EQ(e.sequence(), 100u);
}

// The steps of `job`'s events in the history (empty: every job's), oldest first.
std::vector<uint64_t> HistorySteps(EventBus* bus, const std::string& job) {
  std::vector<uint64_t> steps;
  auto sub = bus->Subscribe(job, 1000, /*live=*/false);
  for (v1::Event e;
       sub->Next(&e, absl::ZeroDuration()) == EventBus::Subscription::Result::kEvent;) {
    steps.push_back(e.step());
  }
  return steps;
}

// One job spiking every step must not push another job's few spikes out of the history: a
// job's on-call would find its spikes gone from `gstabctl events --job`.
TEST(EventBusTest, ANoisyJobCannotPushAQuietJobsEventsOutOfTheHistory) {
  EventBus bus(/*capacity=*/64, /*per_job=*/4, /*total=*/8);
  bus.Publish(Spike("quiet", 10));
  for (uint64_t s = 1; s <= 500; ++s) {
    bus.Publish(Spike("noisy", s));
    if (s == 250) bus.Publish(Spike("quiet", 20));
  }
  EXPECT_EQ(HistorySteps(&bus, "quiet"), (std::vector<uint64_t>{10, 20}));
  EXPECT_EQ(HistorySteps(&bus, "noisy"), (std::vector<uint64_t>{497, 498, 499, 500}));
  EXPECT_EQ(HistorySteps(&bus, ""), (std::vector<uint64_t>{10, 20, 497, 498, 499, 500}));
}

// A daemon that runs for weeks sees many jobs come and go: their old events age out before a
// running job's newer ones, which stay its newest `per_job`.
TEST(EventBusTest, FinishedJobsOldEventsAgeOutBeforeARunningJobsNewOnes) {
  EventBus bus(/*capacity=*/1000, /*per_job=*/50, /*total=*/100);
  for (uint64_t s = 1; s <= 50; ++s) bus.Publish(Spike("hot", s));
  for (int j = 0; j < 1100; ++j) bus.Publish(Spike("finished-" + std::to_string(j), 1));
  for (uint64_t s = 51; s <= 100; ++s) bus.Publish(Spike("hot", s));
  std::vector<uint64_t> want;
  for (uint64_t s = 51; s <= 100; ++s) want.push_back(s);
  EXPECT_EQ(HistorySteps(&bus, "hot"), want);
  EXPECT_EQ(HistorySteps(&bus, "").size(), 100u);  // the total
  EXPECT_TRUE(HistorySteps(&bus, "finished-0").empty());
  EXPECT_EQ(HistorySteps(&bus, "finished-1099").size(), 1u);
}

}  // namespace
}  // namespace gstab
