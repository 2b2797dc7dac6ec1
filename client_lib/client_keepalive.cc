// Client's keep-alive thread: it renews the session's lease, and tells the CUDA side when the
// gstabd holding the session is gone for good (its process exited, or a new gstabd answers),
// so that a worker's stream does not wait for good on steps nobody will run.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <system_error>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client_lib/client.h"
#include "common/listener_process.h"

namespace gstab {

namespace {
std::atomic<Client::DaemonLostHandler> daemon_lost_handler{nullptr};

// Where gstabd's process cannot be watched: longer than a stopping gstabd usually refuses calls
// before it exits (its server's shutdown ends its drain, and 1 + 2 + 3 s later the last resort
// ends it, server/server.cc), though not a bound: a step running its kernels, or held in NCCL,
// holds the exit longer.
constexpr absl::Duration kGstabdStopBound = absl::Seconds(20);
}  // namespace

void Client::SetDaemonLostHandler(DaemonLostHandler handler) { daemon_lost_handler = handler; }

void Client::TellDaemonLost() const {
  if (DaemonLostHandler handler = daemon_lost_handler.load(); handler != nullptr) handler(id_);
}

absl::StatusOr<std::unique_ptr<Client::KeepAlive>> Client::StartKeepAlive() {
  auto k = std::make_unique<KeepAlive>();
  try {
    k->thread = std::thread([this, k = k.get()] {
      k->start.WaitForNotification();
      // One call of the thread's (a keep-alive, or an Identify), cancelled rather than waited
      // for by a detach, an attach or the destructor (on a frozen gstabd, up to its deadline);
      // nullopt when stopped.
      auto call = [&](auto rpc, const auto& request,
                      auto* response) -> std::optional<grpc::Status> {
        grpc::ClientContext c;
        c.set_deadline(absl::ToChronoTime(absl::Now() + std::min(k->period, absl::Seconds(5))));
        {
          absl::MutexLock lock(&k->mu);
          if (k->stop.HasBeenNotified()) return std::nullopt;
          k->call = &c;
        }
        const grpc::Status answer = (stub_.get()->*rpc)(&c, request, response);
        absl::MutexLock lock(&k->mu);
        k->call = nullptr;
        if (k->stop.HasBeenNotified()) return std::nullopt;  // a cancelled call tells nothing
        return answer;
      };
      // The gstabd instance that holds the session (empty: one that cannot say), to tell a
      // session it ended itself (an expired lease, a replacement: it releases the session's
      // steps) from one a new gstabd never had (the one that held it is gone).
      // `identified`: whether the answer was gstabd's own (an instance, or "" from a gstabd
      // of a release that cannot say), not a call that failed on the way.
      auto instance = [&](bool* identified) -> std::optional<std::string> {
        v1::IdentifyResponse identity;
        std::optional<grpc::Status> answer =
            call(&v1::Stabilizer::Stub::Identify, v1::IdentifyRequest(), &identity);
        if (!answer.has_value()) return std::nullopt;
        *identified = answer->ok() || answer->error_code() == grpc::StatusCode::UNIMPLEMENTED;
        return answer->ok() ? identity.instance() : "";
      };
      // Kept where Attach finds it: a new session's gstabd that is not this one means this
      // one is gone, and only this thread would have told (its replacement watches the new).
      bool identified = false;
      std::optional<std::string> holder;
      const auto keep_holder = [&] {
        absl::MutexLock lock(&k->mu);
        if (identified && holder.has_value()) k->holder = *holder;
      };
      {
        absl::MutexLock lock(&k->mu);  // Attach has asked, as a rule: no call here then
        if (!k->holder.empty()) {
          holder = k->holder;
          identified = true;
        }
      }
      if (!holder.has_value()) {
        holder = instance(&identified);
        keep_holder();
      }
      // gstabd's process, where this process can see it (over the socket, in one pid
      // namespace, as CUDA IPC needs): its exit is the one sure sign that the steps it holds
      // will never run. A stopping gstabd refuses calls before it exits, for as long as a step
      // it holds takes (one in NCCL, say), and that step may still run its kernels.
      const ListenerProcess gstabd(absl::StartsWith(target_, "unix:") ? target_.substr(5)
                                                                      : std::string());
      int unanswered = 0;  // keep-alives in a row that found no gstabd
      absl::Time unanswered_since;
      // A keep-alive that failed on the way (no answer in time, a link down a while) is sent again
      // within a second, not a period later: two failures a period apart would let the lease
      // (three periods) run out under a live worker.
      absl::Duration wait = k->period;
      while (holder.has_value() && !k->stop.WaitForNotificationWithTimeout(wait)) {
        // After a lost connection (a TCP link down a while) gRPC waits out its backoff, up to
        // two minutes, failing every call at once meanwhile: a worker idle for that long (an
        // evaluation) would lose its session to a gstabd that is reachable again.
        ReconnectIfBackingOff();
        // A first Identify lost on the way is asked again, and its answer taken only when the
        // keep-alive beside it is answered too (else it may be a new gstabd's).
        bool asked_again = false;
        std::optional<std::string> again;
        if (!identified && !(again = instance(&asked_again)).has_value()) break;
        v1::KeepAliveRequest req;
        req.set_session(k->session);
        v1::KeepAliveResponse resp;
        std::optional<grpc::Status> answer = call(&v1::Stabilizer::Stub::KeepAlive, req, &resp);
        if (!answer.has_value()) break;
        if (asked_again && answer->ok()) {
          holder = std::move(again);
          identified = true;
          keep_holder();
        }
        // Not gstabd's own refusals (a replaced session's ABORTED, say): they would repeat.
        const bool retry = answer->error_details().empty() &&
                           (answer->error_code() == grpc::StatusCode::UNAVAILABLE ||
                            answer->error_code() == grpc::StatusCode::DEADLINE_EXCEEDED);
        wait = retry ? std::min(k->period, absl::Seconds(1)) : k->period;
        if (answer->error_code() != grpc::StatusCode::UNAVAILABLE) {
          unanswered = 0;
        } else if (unanswered++ == 0) {
          unanswered_since = absl::Now();
        }
        // Without the process to watch (over TCP, or in another pid namespace): gone once no
        // answer came for longer than a stop takes, unless a step holds it.
        bool lost = answer->ok() ? false
                    : gstabd.Watching()
                        ? gstabd.Exited()
                        : unanswered >= 2 && absl::Now() - unanswered_since >= kGstabdStopBound;
        if (answer->error_code() == grpc::StatusCode::UNAUTHENTICATED) {
          bool now_identified = false;
          std::optional<std::string> now = instance(&now_identified);
          if (!now.has_value()) break;
          // Not told when either gstabd could not be asked: the session's steps are then left
          // to its re-registration or destruction.
          lost |= identified && now_identified && (holder->empty() || *now != *holder);
        }
        if (lost) TellDaemonLost();
      }
    });
  } catch (const std::system_error& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot start the session's keep-alive thread (", e.what(),
                     "): the process is out of threads or memory; nothing was attached"));
  }
  return k;
}

void Client::StopKeepAlive() {
  if (keepalive_ == nullptr) return;
  StopKeepAlive(keepalive_.get());
  keepalive_.reset();
}

void Client::StopKeepAlive(KeepAlive* k) {
  k->stop.Notify();
  if (!k->start.HasBeenNotified()) k->start.Notify();  // one never given a session
  {
    absl::MutexLock lock(&k->mu);
    if (k->call != nullptr) k->call->TryCancel();
  }
  if (k->thread.joinable()) k->thread.join();
}

}  // namespace gstab
