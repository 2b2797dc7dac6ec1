#include "server/registration.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <thread>

#include "absl/time/clock.h"
#include "client_lib/arena.h"
#include "common/shm_names.h"
#include "gtest/gtest.h"
#include "server/shm_mapping.h"

namespace gstab {
namespace {

// Containers sharing /dev/shm (pods with hostIPC) each have their own pid namespace: a pid in
// another namespace's object name says nothing here, and its object must stay.
TEST(ShmNamesTest, StaleObjectsAreRemovedOnlyInTheirOwnPidNamespace) {
  const std::string dead_here = ShmNamePrefix(999999999) + "test";       // above any pid_max
  const std::string other_namespace = "gstab-999999998-999999999-test";  // pid dead here
  for (const std::string& name : {dead_here, other_namespace}) {
    const int fd = shm_open(("/" + name).c_str(), O_RDWR | O_CREAT, 0600);
    ASSERT_GE(fd, 0) << name;
    close(fd);
  }
  RemoveStaleShmObjects();
  EXPECT_FALSE(std::filesystem::exists("/dev/shm/" + dead_here));
  EXPECT_TRUE(std::filesystem::exists("/dev/shm/" + other_namespace));
  shm_unlink(("/" + other_namespace).c_str());
  shm_unlink(("/" + dead_here).c_str());
  // And the names this process makes carry its namespace and pid.
  EXPECT_EQ(NewShmName().rfind("/" + ShmNamePrefix(getpid()), 0), 0u);
}

v1::RegisterBuffersRequest OneTensor(uint64_t size_bytes, uint64_t numel) {
  v1::RegisterBuffersRequest r;
  v1::Buffer* b = r.add_buffers();
  b->set_transport(v1::TRANSPORT_HOST_SHM);
  b->set_shm_name("/gstab-1-test");
  b->set_size_bytes(size_bytes);
  b->set_dtype(v1::DTYPE_FLOAT32);
  v1::Tensor* t = r.add_tensors();
  t->set_name("w");
  t->set_numel(numel);
  return r;
}

TEST(RegistrationTest, ValidPlanResolvesGroupsAndBytes) {
  v1::RegisterBuffersRequest r = OneTensor(400, 60);
  v1::Tensor* t = r.add_tensors();
  t->set_name("b");
  t->set_offset(60);
  t->set_numel(40);
  t->set_group("layer0");
  absl::StatusOr<RegistrationPlan> plan = ValidateRegistration(r, RegistrationCaps{});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->tensors[0].group, "w");  // empty group: the tensor's own
  EXPECT_EQ(plan->tensors[1].group, "layer0");
  EXPECT_EQ(plan->total_bytes, 400u);
}

// A tensor without a group has one of its own, named after it: another tensor naming that group
// is refused (it would share the first's norm unasked), while both naming it share it.
TEST(RegistrationTest, AGroupOfItsOwnIsNotSharedUnasked) {
  v1::RegisterBuffersRequest r = OneTensor(400, 60);  // "w", no group
  v1::Tensor* t = r.add_tensors();
  t->set_name("w.bias");
  t->set_offset(60);
  t->set_numel(40);
  t->set_group("w");
  absl::Status s = ValidateRegistration(r, RegistrationCaps{}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("tensor 'w' has a group of its own (no group given), which is "
                             "named after it, and tensor 'w.bias' names group 'w'"),
            std::string::npos)
      << s;
  r.mutable_tensors(0)->set_group("w");
  absl::StatusOr<RegistrationPlan> plan = ValidateRegistration(r, RegistrationCaps{});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->tensors[0].group, plan->tensors[1].group);
}

TEST(RegistrationTest, CapsMixedReductionsAndNamesAreRejected) {
  RegistrationCaps caps;
  caps.max_bytes = 100;
  EXPECT_EQ(ValidateRegistration(OneTensor(400, 100), caps).status().code(),
            absl::StatusCode::kResourceExhausted);

  // Summed without wrapping around: two tensors of 2^63 bytes each are more than any cap.
  caps.max_bytes = ~uint64_t{0};
  v1::RegisterBuffersRequest huge = OneTensor(uint64_t{1} << 63, uint64_t{1} << 61);
  *huge.add_buffers() = huge.buffers(0);
  huge.mutable_buffers(1)->set_shm_name("/gstab-1-other");
  *huge.add_tensors() = huge.tensors(0);
  huge.mutable_tensors(1)->set_name("v");
  huge.mutable_tensors(1)->set_buffer(1);
  absl::Status s = ValidateRegistration(huge, caps).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("tensor 1 ('v') add up to more than"), std::string::npos) << s;

  v1::RegisterBuffersRequest mixed = OneTensor(400, 50);
  mixed.mutable_tensors(0)->set_group("g");
  v1::Tensor* t = mixed.add_tensors();
  t->set_name("v");
  t->set_offset(50);
  t->set_numel(50);
  t->set_group("g");
  t->set_reduction(v1::REDUCTION_REPLICATED);
  s = ValidateRegistration(mixed, RegistrationCaps{}).status();
  EXPECT_NE(s.message().find("mixes sharded and replicated"), std::string::npos) << s;
  t->set_reduction(v1::REDUCTION_NODE_SHARDED);  // HSDP's: known, but not mixed either
  s = ValidateRegistration(mixed, RegistrationCaps{}).status();
  EXPECT_NE(s.message().find("mixes sharded and node-sharded"), std::string::npos) << s;
  mixed.mutable_tensors(0)->set_reduction(v1::REDUCTION_NODE_SHARDED);
  absl::StatusOr<RegistrationPlan> plan = ValidateRegistration(mixed, RegistrationCaps{});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->tensors[1].reduction, v1::REDUCTION_NODE_SHARDED);
  t->set_reduction(static_cast<v1::Reduction>(7));
  s = ValidateRegistration(mixed, RegistrationCaps{}).status();
  EXPECT_NE(s.message().find("unknown reduction 7"), std::string::npos) << s;

  v1::RegisterBuffersRequest bad_name = OneTensor(400, 10);
  bad_name.mutable_tensors(0)->set_name("has space");
  EXPECT_EQ(ValidateRegistration(bad_name, RegistrationCaps{}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateRegistration(v1::RegisterBuffersRequest(), RegistrationCaps{}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateJobName("../etc").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidateJobName("llama-7b_run.3").ok());
}

TEST(RegistrationTest, CudaIpcBuffersAreValidatedBeforeAnyCudaCall) {
  auto cuda = [](auto mutate) {
    v1::RegisterBuffersRequest r = OneTensor(400, 100);
    v1::Buffer* b = r.mutable_buffers(0);
    b->set_transport(v1::TRANSPORT_CUDA_IPC);
    b->clear_shm_name();
    b->set_ipc_handle(std::string(64, '\x01'));
    b->set_device(0);
    mutate(b);
    return ValidateRegistration(r, RegistrationCaps{}).status();
  };
  absl::Status short_handle = cuda([](v1::Buffer* b) { b->set_ipc_handle("abc"); });
  EXPECT_EQ(short_handle.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(short_handle.message().find("is 3 bytes"), std::string::npos) << short_handle;
  absl::Status device = cuda([](v1::Buffer* b) { b->set_device(-1); });
  EXPECT_NE(device.message().find("device ordinal -1"), std::string::npos) << device;
  absl::Status overflow = cuda([](v1::Buffer* b) { b->set_offset(~uint64_t{0} - 3); });
  EXPECT_EQ(overflow.code(), absl::StatusCode::kInvalidArgument) << overflow;
  absl::Status dtype = cuda([](v1::Buffer* b) { b->set_dtype(v1::DTYPE_UNSPECIFIED); });
  EXPECT_NE(dtype.message().find("unknown dtype"), std::string::npos) << dtype;
  // Well-formed: refused only because this daemon has no CUDA pipeline, and it says so.
  absl::Status valid = cuda([](v1::Buffer*) {});
  EXPECT_EQ(valid.code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(valid.message().find("host_shm"), std::string::npos) << valid;
}

TEST(RegistrationTest, MappingChecksTheRealObjectSizeAndSharesMappings) {
  GradientArena arena;
  arena.AddTensor("w", 256, DType::kFloat32);
  ASSERT_TRUE(arena.Allocate().ok());
  MappingRegistry registry;
  v1::RegisterBuffersRequest r = arena.RegistrationRequest();
  absl::StatusOr<MappedRegistration> a =
      MapRegistration(*ValidateRegistration(r, RegistrationCaps{}), &registry, nullptr, getuid());
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<MappedRegistration> b =
      MapRegistration(*ValidateRegistration(r, RegistrationCaps{}), &registry, nullptr, getuid());
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(a->mappings[0].get(), b->mappings[0].get());  // one mapping, refcounted
  EXPECT_EQ(registry.LiveMappings(), 1);
  static_cast<float*>(arena.data(0))[3] = 42.0f;
  EXPECT_EQ(static_cast<float*>(a->tensor_data[0])[3], 42.0f);  // the same memory
  a->mappings.clear();
  EXPECT_EQ(registry.LiveMappings(), 1);
  b->mappings.clear();
  EXPECT_EQ(registry.LiveMappings(), 0);

  r.mutable_buffers(0)->set_size_bytes(arena.size_bytes() + 64);
  r.mutable_buffers(0)->set_offset(0);
  absl::Status s =
      MapRegistration(*ValidateRegistration(r, RegistrationCaps{}), &registry, nullptr, getuid())
          .status();
  EXPECT_NE(s.message().find("exceeds"), std::string::npos) << s;
}

// The progress word: the arena's lies past its tensors, and gstabd's mark reaches the worker's
// memory there. One in a tensor, misaligned, past the object or in a cuda_ipc registration is
// refused, saying why.
TEST(RegistrationTest, TheProgressWordLiesOutsideTheTensorsInsideTheObject) {
  GradientArena arena;
  arena.AddTensor("w", 256, DType::kFloat32);
  ASSERT_TRUE(arena.Allocate().ok());
  MappingRegistry registry;
  v1::RegisterBuffersRequest r = arena.RegistrationRequest();
  ASSERT_TRUE(r.has_progress());
  EXPECT_EQ(r.progress().offset(), 1024u);  // right after the tensor's 1 KiB
  absl::StatusOr<MappedRegistration> m =
      MapRegistration(*ValidateRegistration(r, RegistrationCaps{}), &registry, nullptr, getuid());
  ASSERT_TRUE(m.ok()) << m.status();
  MarkProgress(m->progress, 7, /*scaled=*/false);
  const auto* word = reinterpret_cast<const uint64_t*>(
      static_cast<const unsigned char*>(arena.data(0)) + r.progress().offset());
  EXPECT_EQ(*word, 7u * 4 + 1);
  MarkProgress(m->progress, 7, /*scaled=*/true);
  EXPECT_EQ(*word, 7u * 4 + 2);
  MarkProgress(nullptr, 8, true);  // a registration without one: nothing

  auto refusal = [&](uint32_t buffer, uint64_t offset) {
    v1::RegisterBuffersRequest bad = r;
    bad.mutable_progress()->set_buffer(buffer);
    bad.mutable_progress()->set_offset(offset);
    absl::StatusOr<RegistrationPlan> plan = ValidateRegistration(bad, RegistrationCaps{});
    if (!plan.ok()) return std::string(plan.status().message());
    return std::string(
        MapRegistration(*std::move(plan), &registry, nullptr, getuid()).status().message());
  };
  EXPECT_NE(refusal(0, 1016).find("lies in tensor 0 ('w')"), std::string::npos);
  EXPECT_NE(refusal(0, 1028).find("not that of an aligned 8-byte word"), std::string::npos);
  EXPECT_NE(refusal(1, 1024).find("buffer index 1 is out of range"), std::string::npos);
  EXPECT_NE(refusal(0, uint64_t{1} << 40).find("lies past the"), std::string::npos);
  EXPECT_EQ(refusal(0, arena.size_bytes() - 8), "");  // the object's last word

  v1::RegisterBuffersRequest cuda = r;
  cuda.mutable_buffers(0)->set_transport(v1::TRANSPORT_CUDA_IPC);
  cuda.mutable_buffers(0)->set_ipc_handle(std::string(64, '\0'));
  RegistrationCaps caps;
  caps.cuda_ipc = true;
  absl::Status s = ValidateRegistration(cuda, caps).status();
  EXPECT_NE(s.message().find("progress: a word in host shared memory"), std::string::npos) << s;
}

// An object replaced under its name (removed and made again) or resized while a registration
// still maps it is mapped anew: registering again reaches the worker's current memory, at its
// current size, not the old mapping.
TEST(RegistrationTest, AnObjectReplacedOrResizedUnderItsNameIsMappedAnew) {
  const std::string name = "/gstab-test-" + std::to_string(getpid());
  auto make = [&](size_t bytes, float first) {
    const int fd = shm_open(name.c_str(), O_RDWR | O_CREAT, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, static_cast<off_t>(bytes)), 0);
    ASSERT_EQ(posix_fallocate(fd, 0, static_cast<off_t>(bytes)), 0);
    ASSERT_EQ(pwrite(fd, &first, sizeof first, 0), static_cast<ssize_t>(sizeof first));
    close(fd);
  };
  make(8192, 1.0f);
  MappingRegistry registry;
  absl::StatusOr<std::shared_ptr<ShmMapping>> held = registry.Acquire(name);
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_EQ(registry.Acquire(name)->get(), held->get());  // the same object: shared

  shm_unlink(name.c_str());
  make(8192, 2.0f);  // another object of that name
  absl::StatusOr<std::shared_ptr<ShmMapping>> replaced = registry.Acquire(name);
  ASSERT_TRUE(replaced.ok()) << replaced.status();
  EXPECT_NE(replaced->get(), held->get());
  EXPECT_EQ(reinterpret_cast<float*>((*replaced)->data())[0], 2.0f);
  EXPECT_EQ(reinterpret_cast<float*>((*held)->data())[0], 1.0f);  // its holders keep theirs

  make(4096, 3.0f);  // the same object, shrunk
  absl::StatusOr<std::shared_ptr<ShmMapping>> shrunk = registry.Acquire(name);
  ASSERT_TRUE(shrunk.ok()) << shrunk.status();
  EXPECT_EQ((*shrunk)->size(), 4096u);
  EXPECT_TRUE((*shrunk)->CheckSize().ok());
  EXPECT_FALSE((*replaced)->CheckSize().ok());  // the old mapping is now past the end

  // Grown, or linked under a second name, while a mapping of it is still usable: a second
  // mapping's tensors could be claimed beside the first's and scaled twice. Refused.
  make(16384, 4.0f);
  absl::Status grown = registry.Acquire(name).status();
  EXPECT_EQ(grown.code(), absl::StatusCode::kFailedPrecondition) << grown;
  EXPECT_NE(grown.message().find("(16384 bytes) is the object gstabd maps already (4096 bytes) "
                                 "for a registration still in use"),
            std::string::npos)
      << grown;
  const std::string linked = name + "-linked";
  ASSERT_EQ(link(("/dev/shm" + name).c_str(), ("/dev/shm" + linked).c_str()), 0);
  absl::Status alias = registry.Acquire(linked).status();
  EXPECT_EQ(alias.code(), absl::StatusCode::kFailedPrecondition) << alias;
  EXPECT_NE(alias.message().find("is the object gstabd maps already as '" + name + "'"),
            std::string::npos)
      << alias;
  shrunk->reset();  // its registration gone: the object is mapped at its new size
  absl::StatusOr<std::shared_ptr<ShmMapping>> regrown = registry.Acquire(name);
  ASSERT_TRUE(regrown.ok()) << regrown.status();
  EXPECT_EQ((*regrown)->size(), 16384u);
  // The mapping the shrink made past its end stays over, grown back or not: two usable
  // mappings of one object at different addresses would both be scaled.
  const absl::Status over = (*replaced)->CheckSize();
  EXPECT_EQ(over.code(), absl::StatusCode::kFailedPrecondition) << over;
  EXPECT_NE(over.message().find("(8192 bytes here) was registered again since this mapping of "
                                "it failed (shared memory '" +
                                name + "' shrank from 8192 to 4096"),
            std::string::npos)
      << over;
  shm_unlink(linked.c_str());
  shm_unlink(name.c_str());
}

// An object shrunk again and again while each earlier mapping is still held would take gstabd's
// address space at each size, for memory it holds once: past a few such mappings, refused.
TEST(RegistrationTest, AnObjectMappedAtManySizesAtOnceIsRefused) {
  const std::string name = "/gstab-test-sizes-" + std::to_string(getpid());
  const int fd = shm_open(name.c_str(), O_RDWR | O_CREAT, 0600);
  ASSERT_GE(fd, 0);
  const size_t page = 4096;
  ASSERT_EQ(posix_fallocate(fd, 0, static_cast<off_t>(16 * page)), 0);
  MappingRegistry registry;
  std::vector<std::shared_ptr<ShmMapping>> held;
  for (size_t i = 0; i <= MappingRegistry::kMaxMappingsPerObject; ++i) {
    ASSERT_EQ(ftruncate(fd, static_cast<off_t>((16 - i) * page)), 0);
    absl::StatusOr<std::shared_ptr<ShmMapping>> m = registry.Acquire(name);
    if (i < MappingRegistry::kMaxMappingsPerObject) {
      ASSERT_TRUE(m.ok()) << i << ": " << m.status();
      held.push_back(*std::move(m));
      continue;
    }
    EXPECT_EQ(m.status().code(), absl::StatusCode::kResourceExhausted) << m.status();
    EXPECT_NE(m.status().message().find("maps this object 8 times already, at earlier sizes"),
              std::string::npos)
        << m.status();
  }
  held.resize(1);  // the other registrations let go: mapped at its size again
  EXPECT_TRUE(registry.Acquire(name).ok());
  close(fd);
  shm_unlink(name.c_str());
}

// An object its worker holds a lease on (fcntl F_SETLEASE) is the worker's doing, said so:
// gstabd's open would wait for the lease's break. It was an INTERNAL error.
TEST(RegistrationTest, AnObjectUnderALeaseIsRefusedSayingSo) {
  const std::string name = "/gstab-test-lease-" + std::to_string(getpid());
  int fd = shm_open(name.c_str(), O_RDWR | O_CREAT, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(posix_fallocate(fd, 0, 4096), 0);
  close(fd);
  fd = shm_open(name.c_str(), O_RDONLY, 0);
  ASSERT_GE(fd, 0);
  signal(SIGIO, SIG_IGN);  // the lease's break is signalled to its holder, this process
  if (fcntl(fd, F_SETLEASE, F_RDLCK) != 0) {
    close(fd);
    shm_unlink(name.c_str());
    GTEST_SKIP() << "no file leases here: " << strerror(errno);
  }
  MappingRegistry registry;
  const absl::Status s = registry.Acquire(name).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("holds a lease on it"), std::string::npos) << s;
  fcntl(fd, F_SETLEASE, F_UNLCK);
  close(fd);
  EXPECT_TRUE(registry.Acquire(name).ok());
  signal(SIGIO, SIG_DFL);
  shm_unlink(name.c_str());
}

// A FIFO put under a mapped object's name is refused, at once: opening it to look would wait
// for a writer, holding up every registration on the node.
TEST(RegistrationTest, AFifoUnderAnObjectsNameIsRefusedWithoutWaiting) {
  GradientArena arena;
  arena.AddTensor("w", 1024, DType::kFloat32);
  ASSERT_TRUE(arena.Allocate().ok());
  MappingRegistry registry;
  absl::StatusOr<std::shared_ptr<ShmMapping>> held = registry.Acquire(arena.shm_name());
  ASSERT_TRUE(held.ok()) << held.status();
  const std::string path = "/dev/shm" + arena.shm_name();
  ASSERT_EQ(unlink(path.c_str()), 0);
  ASSERT_EQ(mkfifo(path.c_str(), 0600), 0);
  // Nor is it opened: an open would wake a process waiting in open() for a reader.
  std::atomic<bool> woken{false};
  std::thread writer([&] {
    const int w = open(path.c_str(), O_WRONLY | O_CLOEXEC);
    woken = true;
    if (w >= 0) close(w);
  });
  absl::SleepFor(absl::Milliseconds(100));  // the writer waits in open()
  const absl::Status fifo = registry.Acquire(arena.shm_name()).status();
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_FALSE(woken) << "gstabd's look at the FIFO opened it";
  const int reader = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);  // lets it go
  writer.join();
  if (reader >= 0) close(reader);
  unlink(path.c_str());
  EXPECT_EQ(fifo.code(), absl::StatusCode::kInvalidArgument) << fifo;
  EXPECT_NE(fifo.message().find("is not a shared memory object but a FIFO"), std::string::npos)
      << fifo;
}

// A sparse object (ftruncate alone) is refused before it is mapped: the pages gstabd touched
// would be allocated on its account. Pages released after registration refuse the step.
TEST(RegistrationTest, AnObjectWithoutAllItsPagesIsRefused) {
  const std::string name = "/gstab-test-sparse-" + std::to_string(getpid());
  const int fd = shm_open(name.c_str(), O_RDWR | O_CREAT, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 1 << 20), 0);
  MappingRegistry registry;
  absl::Status sparse = registry.Acquire(name).status();
  EXPECT_EQ(sparse.code(), absl::StatusCode::kFailedPrecondition) << sparse;
  EXPECT_NE(sparse.message().find("has 0 of its 1048576 bytes allocated"), std::string::npos)
      << sparse;
  EXPECT_EQ(registry.LiveMappings(), 0);

  ASSERT_EQ(posix_fallocate(fd, 0, 1 << 20), 0);
  absl::StatusOr<std::shared_ptr<ShmMapping>> whole = registry.Acquire(name);
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_TRUE((*whole)->CheckSize().ok());
  ASSERT_EQ(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 8192), 0);
  absl::Status punched = (*whole)->CheckSize();
  EXPECT_EQ(punched.code(), absl::StatusCode::kFailedPrecondition) << punched;
  EXPECT_NE(punched.message().find("changed after it was registered"), std::string::npos)
      << punched;
  // Holes hidden by blocks reserved past the end: within the last huge page they are let be
  // (at most 2 MiB of holes an object); past it, refused at the step, and at registration.
  ASSERT_EQ(fallocate(fd, FALLOC_FL_KEEP_SIZE, 1 << 20, 8192), 0);
  EXPECT_TRUE((*whole)->CheckSize().ok());
  ASSERT_EQ(fallocate(fd, FALLOC_FL_KEEP_SIZE, 1 << 20, 4 << 20), 0);
  absl::Status hidden = (*whole)->CheckSize();
  EXPECT_EQ(hidden.code(), absl::StatusCode::kFailedPrecondition) << hidden;
  EXPECT_NE(hidden.message().find("bytes allocated past its end of 1048576"), std::string::npos)
      << hidden;
  whole->reset();
  absl::Status refused = registry.Acquire(name).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_NE(refused.message().find("would hide holes in it"), std::string::npos) << refused;
  close(fd);
  shm_unlink(name.c_str());
}

// A symbolic link in /dev/shm is refused as bad input, saying so (not as gstabd's own failure).
TEST(RegistrationTest, ASymbolicLinkIsRefusedSayingSo) {
  GradientArena arena;
  arena.AddTensor("w", 1024, DType::kFloat32);
  ASSERT_TRUE(arena.Allocate().ok());
  const std::string link = "/gstab-test-link-" + std::to_string(getpid());
  ASSERT_EQ(symlink(("/dev/shm" + arena.shm_name()).c_str(), ("/dev/shm" + link).c_str()), 0);
  MappingRegistry registry;
  const absl::Status refused = registry.Acquire(link).status();
  unlink(("/dev/shm" + link).c_str());
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_NE(refused.message().find("it is a symbolic link"), std::string::npos) << refused;
  EXPECT_EQ(registry.LiveMappings(), 0);
}

// An object of another uid is refused before it is mapped, and so is a mapping already live.
TEST(RegistrationTest, AnotherUidsObjectIsRefusedWithoutBeingMapped) {
  const std::string name = "/gstab-test-owner-" + std::to_string(getpid());
  const int fd = shm_open(name.c_str(), O_RDWR | O_CREAT, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(posix_fallocate(fd, 0, 4096), 0);
  close(fd);
  const uid_t other = geteuid() + 1;
  MappingRegistry registry;
  absl::Status refused = registry.Acquire(name, UINT64_MAX, other).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied) << refused;
  EXPECT_NE(refused.message().find("belongs to uid " + std::to_string(geteuid())),
            std::string::npos)
      << refused;
  EXPECT_EQ(registry.LiveMappings(), 0);
  absl::StatusOr<std::shared_ptr<ShmMapping>> own = registry.Acquire(name, UINT64_MAX, geteuid());
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_EQ(registry.Acquire(name, UINT64_MAX, other).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(registry.LiveMappings(), 1);
  shm_unlink(name.c_str());
}

// The registry maps at most its cap of objects at once, an object mapped anew under its name
// while its old mapping is held counted twice; a mapping let go makes room.
TEST(RegistrationTest, TheRegistryMapsAtMostItsCapOfObjects) {
  GradientArena a, b;
  a.AddTensor("a", 256, DType::kFloat32);
  b.AddTensor("b", 256, DType::kFloat32);
  ASSERT_TRUE(a.Allocate().ok());
  ASSERT_TRUE(b.Allocate().ok());
  MappingRegistry registry(1);
  absl::StatusOr<std::shared_ptr<ShmMapping>> held = registry.Acquire(a.shm_name());
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_TRUE(registry.Acquire(a.shm_name()).ok());  // the same mapping: nothing more mapped
  absl::Status refused = registry.Acquire(b.shm_name()).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_NE(refused.message().find(b.shm_name()), std::string::npos) << refused;
  EXPECT_NE(refused.message().find("--max_mappings"), std::string::npos) << refused;
  EXPECT_EQ(registry.LiveMappings(), 1);
  held->reset();
  EXPECT_EQ(registry.LiveMappings(), 0);
  EXPECT_TRUE(registry.Acquire(b.shm_name()).ok());
}

// One uid's objects take at most their share of the mappings; another uid's are still mapped.
TEST(RegistrationTest, TheRegistryMapsAtMostItsCapOfOneOwnersObjects) {
  GradientArena a, b, theirs;
  for (GradientArena* arena : {&a, &b, &theirs}) {
    arena->AddTensor("w", 256, DType::kFloat32);
    ASSERT_TRUE(arena->Allocate().ok());
  }
  if (geteuid() != 0) GTEST_SKIP() << "giving an object to another uid needs root";
  const int fd = shm_open(theirs.shm_name().c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fchown(fd, getuid() + 1, getgid()), 0) << strerror(errno);
  close(fd);
  MappingRegistry registry(/*max_mappings=*/3, /*max_per_owner=*/1);
  absl::StatusOr<std::shared_ptr<ShmMapping>> held = registry.Acquire(a.shm_name());
  ASSERT_TRUE(held.ok()) << held.status();
  absl::Status refused = registry.Acquire(b.shm_name()).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_NE(refused.message().find("--max_mappings_per_owner"), std::string::npos) << refused;
  EXPECT_EQ(registry.LiveMappings(), 1);  // the refused object was not kept mapped
  absl::StatusOr<std::shared_ptr<ShmMapping>> other = registry.Acquire(theirs.shm_name());
  EXPECT_TRUE(other.ok()) << other.status();
  held->reset();
  EXPECT_TRUE(registry.Acquire(b.shm_name()).ok());  // the owner's share is free again
}

// gstabd maps whole objects: one far larger than the registered bytes may be (a sparse object
// of terabytes would take its address space) is refused by size.
TEST(RegistrationTest, AnObjectLargerThanTheCapIsNotMapped) {
  GradientArena arena;
  arena.AddTensor("w", 256, DType::kFloat32);
  ASSERT_TRUE(arena.Allocate().ok());
  const int fd = shm_open(arena.shm_name().c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, off_t{1} << 40), 0);  // 1 TiB, sparse
  close(fd);
  RegistrationCaps caps;
  caps.max_bytes = 1 << 20;
  MappingRegistry registry;
  absl::Status s = MapRegistration(*ValidateRegistration(arena.RegistrationRequest(), caps),
                                   &registry, nullptr, getuid())
                       .status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("is 1099511627776 bytes"), std::string::npos) << s;
  EXPECT_EQ(registry.LiveMappings(), 0);
}

// Objects each within the cap, together beyond it: refused, nothing left mapped (a registration
// could otherwise map the cap once per buffer).
TEST(RegistrationTest, ObjectsTogetherLargerThanTheCapAreNotMapped) {
  RegistrationCaps caps;
  caps.max_bytes = 1 << 20;
  GradientArena a, b;
  a.AddTensor("a", 256, DType::kFloat32);
  b.AddTensor("b", 256, DType::kFloat32);
  ASSERT_TRUE(a.Allocate().ok());
  ASSERT_TRUE(b.Allocate().ok());
  absl::StatusOr<RegistrationPlan> one = ValidateRegistration(a.RegistrationRequest(), caps);
  ASSERT_TRUE(one.ok()) << one.status();
  v1::RegisterBuffersRequest request;
  for (GradientArena* arena : {&a, &b}) {
    const int fd = shm_open(arena->shm_name().c_str(), O_RDWR, 0);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(posix_fallocate(fd, 0, static_cast<off_t>(one->max_object_bytes / 2 + 4096)), 0);
    close(fd);
    v1::RegisterBuffersRequest own = arena->RegistrationRequest();
    for (v1::Tensor t : own.tensors()) {
      t.set_buffer(t.buffer() + static_cast<uint32_t>(request.buffers_size()));
      *request.add_tensors() = t;
    }
    for (const v1::Buffer& buffer : own.buffers()) *request.add_buffers() = buffer;
  }
  MappingRegistry registry;
  absl::StatusOr<RegistrationPlan> plan = ValidateRegistration(request, caps);
  ASSERT_TRUE(plan.ok()) << plan.status();
  absl::Status s = MapRegistration(*plan, &registry, nullptr, getuid()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("objects come to more than"), std::string::npos) << s;
  EXPECT_EQ(registry.LiveMappings(), 0);
}

}  // namespace
}  // namespace gstab
