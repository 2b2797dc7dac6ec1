// What gstabctl prints: the status table with its waiting and retired sections, the top screen,
// sparklines and event lines.
#include "tools/ctl_format.h"

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace gstab::ctl {
namespace {

v1::JobSummary Job(const std::string& name) {
  v1::JobSummary j;
  j.set_job(name);
  j.set_policy("stabilize");
  j.set_attached_workers(2);
  j.set_steps(10);
  j.set_last_step(10);
  j.set_node_count(1);
  return j;
}

TEST(CtlFormatTest, StatusListsJobsThenWaitingStepsThenRetiredJobs) {
  v1::ListJobsResponse jobs;
  *jobs.add_jobs() = Job("steady");
  v1::JobSummary* waiting = jobs.add_jobs();
  *waiting = Job("waiting");
  waiting->set_waiting_step(0);  // a loop starting at step 0 is waiting too
  waiting->add_arrived_local_ranks(1);
  waiting->set_local_world_size(4);
  v1::JobSummary* across = jobs.add_jobs();
  *across = Job("across");
  across->set_node_rank(1);
  across->set_node_count(4);
  across->set_owner_uid(1001);
  v1::JobSummary* retired = jobs.add_jobs();
  retired->set_job("old");
  retired->set_policy("clip");
  retired->set_retired(true);
  retired->set_last_step(77);
  retired->set_owner_certificate("alice");  // made through gstabd's TCP port

  const std::string out = StatusTable(jobs);
  const size_t table = out.find("steady"), wait = out.find("waiting for local workers:"),
               old = out.find("not held, kept as checkpoints");
  ASSERT_NE(table, std::string::npos) << out;
  ASSERT_NE(wait, std::string::npos) << out;
  ASSERT_NE(old, std::string::npos) << out;
  EXPECT_LT(table, wait);
  EXPECT_LT(wait, old);
  EXPECT_NE(out.find("waiting: step 0 waits for local ranks 0,2,3 (1 of 4 arrived)\n"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("   1/4 1001\n"), std::string::npos) << out;  // this node of four; its uid
  EXPECT_NE(out.find(" STEPS  LAST_STEP "), std::string::npos) << out;
  EXPECT_NE(out.find("       10         10 "), std::string::npos) << out;  // steps, last step
  EXPECT_NE(out.find("     - -\n"), std::string::npos) << out;     // one node, no owner
  EXPECT_EQ(out.find("steady: step"), std::string::npos) << out;  // nothing waits there
  EXPECT_NE(out.find("       77       0 cert:alice\n"), std::string::npos) << out;  // last

  EXPECT_EQ(out.find("caller:"), std::string::npos) << out;  // from a gstabd before callers
  jobs.set_caller("certificate 'alice'");
  jobs.set_caller_scope(v1::CALLER_SCOPE_OWN_JOBS);
  EXPECT_NE(StatusTable(jobs).find("\ncaller: certificate 'alice', which acts on its own jobs "
                                   "only\n"),
            std::string::npos);
  jobs.set_caller("uid 0");
  jobs.set_caller_scope(v1::CALLER_SCOPE_EVERY_JOB);
  EXPECT_NE(StatusTable(jobs).find("\ncaller: uid 0, which acts on every job\n"),
            std::string::npos);
  jobs.set_caller("a certificate without a name");
  jobs.set_caller_scope(v1::CALLER_SCOPE_NO_JOB);
  EXPECT_NE(StatusTable(jobs).find("\ncaller: a certificate without a name, which may act on no "
                                   "job\n"),
            std::string::npos);

  v1::ListJobsResponse none;
  EXPECT_NE(StatusTable(none).find("(no jobs)"), std::string::npos);
}

// A name past the JOB column's 24 characters widens it for every row, the heading's too.
TEST(CtlFormatTest, ALongJobNameWidensTheJobColumn) {
  v1::ListJobsResponse jobs;
  *jobs.add_jobs() = Job("short");
  const std::string long_name = "llama-70b-pretrain.node-pool-a.run-0042";
  *jobs.add_jobs() = Job(long_name);
  v1::JobSummary* retired = jobs.add_jobs();
  retired->set_job("old");
  retired->set_policy("clip");
  retired->set_retired(true);
  const std::string out = StatusTable(jobs);
  std::vector<size_t> policy_columns;
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    if (line.empty() || line.find("not held") != absl::string_view::npos) continue;
    if (line.find("caller") == 0) continue;
    policy_columns.push_back(line.find_first_not_of(' ', line.find(' ')));
  }
  ASSERT_EQ(policy_columns.size(), 5u) << out;  // two headings, three jobs
  for (size_t column : policy_columns) EXPECT_EQ(column, long_name.size() + 1) << out;
}

TEST(CtlFormatTest, TopShowsAWaitingStepUnderItsJob) {
  v1::ListJobsResponse jobs;
  v1::JobSummary* one = jobs.add_jobs();
  *one = Job("one");
  one->add_arrived_local_ranks(0);
  one->set_waiting_step(11);
  one->set_local_world_size(2);
  *jobs.add_jobs() = Job("two");
  const std::string out = TopScreen(jobs, 60);
  const size_t line = out.find("  one: step 11 waits for local rank 1 (1 of 2 arrived)\n");
  ASSERT_NE(line, std::string::npos) << out;
  EXPECT_LT(out.find("one  [stabilize]"), line);
  EXPECT_LT(line, out.find("two  [stabilize]")) << out;
  EXPECT_EQ(out.substr(line - 1, 1), "\n");  // right under the job's lines, not after a gap
}

TEST(CtlFormatTest, SparklinesMarkNonFiniteValues) {
  EXPECT_EQ(Sparkline({}), "");
  const std::string s = Sparkline({1.0, 10.0, 100.0, NAN, INFINITY});
  EXPECT_EQ(s.substr(s.size() - 2), "!!") << s;
  EXPECT_EQ(s.rfind("\xe2\x96\x81", 0), 0u) << s;  // the smallest is the lowest bar
  EXPECT_EQ(s.substr(0, 9), "\xe2\x96\x81\xe2\x96\x84\xe2\x96\x88") << s;  // ▁▄█
}

TEST(CtlFormatTest, ASteadyNormDrawsFlatAndASpikeStandsOut) {
  // Norms 0.1% apart are noise, not spikes.
  EXPECT_EQ(Sparkline({0.2850, 0.2851, 0.2850, 0.28505}),
            "\xe2\x96\x81\xe2\x96\x81\xe2\x96\x81\xe2\x96\x81");
  EXPECT_EQ(Sparkline({0.285, 0.2851, 285.0, 0.285}),
            "\xe2\x96\x81\xe2\x96\x81\xe2\x96\x88\xe2\x96\x81");  // ▁▁█▁
}

TEST(CtlFormatTest, EventLinesNameTheJobStepAndGroups) {
  v1::Event e;
  e.set_type(v1::EVENT_TYPE_SPIKE);
  e.set_job("j");
  e.set_step(5);
  e.set_norm(12.5);
  e.add_groups("g");
  e.set_dropped_before(3);
  const std::string line = EventLine(e);
  EXPECT_NE(line.find("(3 events dropped"), std::string::npos) << line;
  EXPECT_NE(line.find("job=j step=5 norm="), std::string::npos) << line;
  EXPECT_NE(line.find("groups=g"), std::string::npos) << line;
}

// NaN and infinity point to different causes (0/0, an overflow): each is printed as itself.
TEST(CtlFormatTest, NaNAndInfiniteNormsArePrintedApart) {
  v1::Event e;
  e.set_type(v1::EVENT_TYPE_SKIP);
  e.set_job("j");
  e.set_norm(NAN);
  EXPECT_NE(EventLine(e).find(" norm=nan "), std::string::npos) << EventLine(e);
  e.set_norm(INFINITY);
  EXPECT_NE(EventLine(e).find(" norm=inf "), std::string::npos) << EventLine(e);
}

}  // namespace
}  // namespace gstab::ctl
