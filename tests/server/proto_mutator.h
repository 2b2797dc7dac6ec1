// Malformed protobuf messages for fuzz tests: a valid message with a few fields set, through
// reflection, to values a buggy or hostile client could send.
#pragma once

#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"

namespace gstab::testing {

// Sets a few random fields of a message (recursively) to values chosen to break things.
class Mutator {
  using FieldDescriptor = google::protobuf::FieldDescriptor;
  using Message = google::protobuf::Message;
  using Reflection = google::protobuf::Reflection;

 public:
  Mutator(uint64_t seed, std::vector<std::string> strings)
      : rng_(seed), strings_(std::move(strings)) {}

  // The names, tokens and keys a string field may take (the live ones of the moment).
  void set_strings(std::vector<std::string> strings) { strings_ = std::move(strings); }

  void Mutate(Message* m, int mutations) {
    for (int i = 0; i < mutations; ++i) MutateOne(m, 0);
  }
  uint64_t Below(uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng_); }

 private:
  template <typename T>
  T Pick(const std::vector<T>& values) {
    return values[Below(values.size())];
  }

  uint64_t Integer() {
    return Pick<uint64_t>({0, 1, 2, 3, 7, 64, 255, 65535, 65536, 1u << 31, (1ull << 32) - 1,
                           1ull << 32, 1ull << 50, (1ull << 63) - 1, 1ull << 63,
                           std::numeric_limits<uint64_t>::max(), Below(1000), rng_()});
  }

  double Real() {
    return Pick<double>(
        {0.0, -0.0, 1.0, -1.0, 0.5, 1e-300, 4.9e-324, 1e308, -1e308,
         std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(),
         std::numeric_limits<double>::quiet_NaN(), 1e30, static_cast<double>(Below(100)) / 7});
  }

  std::string Bytes() {
    std::string out(Pick<size_t>({0, 1, 16, 63, 64, 65, 128, 1000}), '\0');
    for (char& c : out) c = static_cast<char>(Below(256));
    return out;
  }

  std::string Text() {
    switch (Below(6)) {
      case 0:
        return "";
      case 1:
        return std::string(Pick<size_t>({129, 257, 4096, 100000}), 'a');
      case 2:
        return Pick<std::string>({"../../etc/passwd", "/dev/shm/x", "a b", "_other", "-", ".",
                                  "\xc3\xa9t\xc3\xa9", "job\n", "%s%n"});
      default:
        return Pick(strings_);
    }
  }

  // Sets field `f` to `v`, or appends `v` to it when `add`.
  template <typename T>
  static void Put(Message* m, const FieldDescriptor* f, bool add, T v,
                  void (Reflection::*set)(Message*, const FieldDescriptor*, T) const,
                  void (Reflection::*append)(Message*, const FieldDescriptor*, T) const) {
    (m->GetReflection()->*(add ? append : set))(m, f, std::move(v));
  }

  void SetScalar(Message* m, const FieldDescriptor* f, bool add) {
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32:
        return Put(m, f, add, static_cast<int32_t>(Integer()), &Reflection::SetInt32,
                   &Reflection::AddInt32);
      case FieldDescriptor::CPPTYPE_UINT32:
        return Put(m, f, add, static_cast<uint32_t>(Integer()), &Reflection::SetUInt32,
                   &Reflection::AddUInt32);
      case FieldDescriptor::CPPTYPE_INT64:
        return Put(m, f, add, static_cast<int64_t>(Integer()), &Reflection::SetInt64,
                   &Reflection::AddInt64);
      case FieldDescriptor::CPPTYPE_UINT64:
        return Put(m, f, add, Integer(), &Reflection::SetUInt64, &Reflection::AddUInt64);
      case FieldDescriptor::CPPTYPE_DOUBLE:
        return Put(m, f, add, Real(), &Reflection::SetDouble, &Reflection::AddDouble);
      case FieldDescriptor::CPPTYPE_FLOAT:
        return Put(m, f, add, static_cast<float>(Real()), &Reflection::SetFloat,
                   &Reflection::AddFloat);
      case FieldDescriptor::CPPTYPE_BOOL:
        return Put(m, f, add, Below(2) == 1, &Reflection::SetBool, &Reflection::AddBool);
      case FieldDescriptor::CPPTYPE_ENUM:  // known values and unknown ones (proto3's are open)
        return Put(
            m, f, add,
            static_cast<int>(Below(static_cast<uint64_t>(f->enum_type()->value_count()) + 3)) - 1,
            &Reflection::SetEnumValue, &Reflection::AddEnumValue);
      case FieldDescriptor::CPPTYPE_STRING:
        // proto3 `string` fields must stay UTF-8 (gRPC would refuse to send them otherwise).
        return Put(m, f, add, f->type() == FieldDescriptor::TYPE_BYTES ? Bytes() : Text(),
                   &Reflection::SetString, &Reflection::AddString);
      case FieldDescriptor::CPPTYPE_MESSAGE:
        return;
    }
  }

  void MutateOne(Message* m, int depth) {
    const google::protobuf::Descriptor* d = m->GetDescriptor();
    if (d->field_count() == 0) return;
    const FieldDescriptor* f = d->field(static_cast<int>(Below(d->field_count())));
    const google::protobuf::Reflection* r = m->GetReflection();
    const bool message = f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE;
    if (f->is_repeated()) {
      const int size = r->FieldSize(*m, f);
      switch (Below(4)) {
        case 0:
          r->ClearField(m, f);
          return;
        case 1:  // another element, valid or not
          if (message) {
            Message* added = r->AddMessage(m, f);
            if (size > 0)
              added->CopyFrom(r->GetRepeatedMessage(*m, f, static_cast<int>(Below(size))));
            if (depth < 4) MutateOne(added, depth + 1);
          } else {
            SetScalar(m, f, /*add=*/true);
          }
          return;
        default:
          if (size > 0 && message && depth < 4) {
            MutateOne(r->MutableRepeatedMessage(m, f, static_cast<int>(Below(size))), depth + 1);
          } else if (!message) {
            SetScalar(m, f, /*add=*/true);
          }
          return;
      }
    }
    if (message) {
      if (depth < 4) MutateOne(r->MutableMessage(m, f), depth + 1);
    } else if (Below(8) == 0) {
      r->ClearField(m, f);
    } else {
      SetScalar(m, f, /*add=*/false);
    }
  }

  std::mt19937_64 rng_;
  std::vector<std::string> strings_;
};

}  // namespace gstab::testing
