# What `cmake --install` puts under the prefix: the daemon and the operator's command line,
# the C ABI library and its header. The container image (deploy/container) installs this.
include(GNUInstallDirs)
# Installed binaries keep the folders of libraries outside the system's (CUDA's, NCCL's).
set_target_properties(gstabd gstabctl gstab_shared PROPERTIES INSTALL_RPATH_USE_LINK_PATH ON)
install(TARGETS gstabd gstabctl RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS gstab_shared LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(FILES ${PROJECT_SOURCE_DIR}/client_lib/gstab.h
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/gstab)
