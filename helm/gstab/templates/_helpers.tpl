{{/* Names and labels shared by every object of the chart. */}}

{{- define "gstab.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gstab.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "gstab.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "gstab.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The metrics Service's name: a DNS label, so at most 63 characters with its suffix. */}}
{{- define "gstab.metricsService" -}}
{{- printf "%s-metrics" (include "gstab.fullname" . | trunc 55 | trimSuffix "-") -}}
{{- end -}}

{{- define "gstab.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gstab.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "gstab.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "gstab.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: gstabd
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The pods' labels: none that a chart release changes (its version), or an upgrade that
changes nothing of gstabd would restart every node's gstabd (with RollingUpdate), ending every
worker's session there, or mark every pod out of date (with OnDelete). */}}
{{- define "gstab.podLabels" -}}
{{ include "gstab.selectorLabels" . }}
app.kubernetes.io/component: gstabd
{{- end -}}

{{/* The `helm test` pod's labels: none of the selector's, or the DaemonSet would adopt it (and
delete it as a second pod on its node) and the metrics Service would route to it. */}}
{{- define "gstab.testLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: {{ include "gstab.name" . }}
app.kubernetes.io/component: test
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Where gstabd runs unless nodeSelector, tolerations or affinity are set. The GPU flavour:
nodes with an NVIDIA GPU (labelled by NVIDIA's GPU feature discovery or by node feature
discovery's PCI vendor label), tolerating their usual taint; elsewhere its runtime class has no
handler. The CPU flavour: anywhere but those, so that it and a GPU release never meet on a node
(they would share its socket and state folders). Both: Linux x86_64 nodes, which the images are
built for. */}}
{{- define "gstab.placement" -}}
{{- $image := list (dict "key" "kubernetes.io/os" "operator" "In" "values" (list "linux")) (dict "key" "kubernetes.io/arch" "operator" "In" "values" (list "amd64")) -}}
{{- $gpuNode := list (dict "matchExpressions" (concat (list (dict "key" "nvidia.com/gpu.present" "operator" "In" "values" (list "true"))) $image)) (dict "matchExpressions" (concat (list (dict "key" "feature.node.kubernetes.io/pci-10de.present" "operator" "In" "values" (list "true"))) $image)) -}}
{{- $notGpuNode := list (dict "matchExpressions" (concat (list (dict "key" "nvidia.com/gpu.present" "operator" "NotIn" "values" (list "true")) (dict "key" "feature.node.kubernetes.io/pci-10de.present" "operator" "NotIn" "values" (list "true"))) $image)) -}}
{{- $placement := dict -}}
{{- if .Values.nodeSelector }}{{ $_ := set $placement "nodeSelector" .Values.nodeSelector }}{{ end -}}
{{- if kindIs "invalid" .Values.tolerations -}}
{{- if .Values.gpu.enabled }}{{ $_ := set $placement "tolerations" (list (dict "key" "nvidia.com/gpu" "operator" "Exists" "effect" "NoSchedule")) }}{{ end -}}
{{- else if .Values.tolerations -}}
{{- $_ := set $placement "tolerations" .Values.tolerations -}}
{{- end -}}
{{- if kindIs "invalid" .Values.affinity -}}
{{- $_ := set $placement "affinity" (dict "nodeAffinity" (dict "requiredDuringSchedulingIgnoredDuringExecution" (dict "nodeSelectorTerms" (ternary $gpuNode $notGpuNode .Values.gpu.enabled)))) -}}
{{- else if .Values.affinity -}}
{{- $_ := set $placement "affinity" .Values.affinity -}}
{{- end -}}
{{- if $placement }}{{ toYaml $placement }}{{ end -}}
{{- end -}}

{{- define "gstab.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gstab.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The backend gstabd runs: cuda on GPU nodes, cpu elsewhere, unless set. */}}
{{- define "gstab.backend" -}}
{{- $backend := .Values.backend | default (ternary "cuda" "cpu" .Values.gpu.enabled) -}}
{{- if and (eq $backend "cuda") (not .Values.gpu.enabled) -}}
{{- fail "backend=cuda needs gpu.enabled=true (the GPU image and the NVIDIA runtime)" -}}
{{- end -}}
{{- $backend -}}
{{- end -}}

{{- define "gstab.image" -}}
{{- $flavour := ternary "cuda" "cpu" .Values.gpu.enabled -}}
{{- $tag := .Values.image.tag | default (printf "%s-%s" .Chart.AppVersion $flavour) -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{- define "gstab.socketPath" -}}
/run/gstab/gstabd.sock
{{- end -}}

{{/* The probes' own socket (gstabd --health_socket), in a volume of the pod alone. */}}
{{- define "gstab.probeSocketPath" -}}
/run/probe/gstabd.sock
{{- end -}}

{{/* The probe: gstabctl asks gstabd's health service over the probes' socket. */}}
{{- define "gstab.healthCommand" -}}
exec:
  command: [gstabctl, --socket={{ include "gstab.probeSocketPath" . }}, health, --timeout_s=5]
{{- end -}}

{{/* A list of integers joined by commas (YAML numbers arrive as floats: 1e+06 otherwise). */}}
{{- define "gstab.joinInts" -}}
{{- $out := list -}}
{{- range . }}{{ $out = append $out (int64 . | toString) }}{{ end -}}
{{- join "," $out -}}
{{- end -}}

{{/* hostPID: as set, or where CUDA IPC needs it (GPU nodes). */}}
{{- define "gstab.hostPID" -}}
{{- if kindIs "invalid" .Values.hostPID -}}{{ .Values.gpu.enabled }}{{- else -}}{{ .Values.hostPID }}{{- end -}}
{{- end -}}

{{/*
Values the chart's own arguments depend on, checked before anything renders: extraArgs may not
set a flag the chart sets, nor extraEnv a variable it sets (the probes, mounts and ports follow the chart's); the allow-lists
must admit `helm test` and `kubectl exec` (gstabd's runAsUser, gid socket.gid or its runAsGroup: the probes use the
probes' socket, which admits gstabd's uid and root whatever the lists say); the peer and metrics ports differ (both are
host ports with peer.enabled); the socket's and the state's host folders are apart;
*/}}
{{- define "gstab.checkValues" -}}
{{- $managed := list "socket" "health_socket" "state_dir" "backend" "metrics_port" "metrics_max_groups" "lease_ms" "step_timeout_ms" "checkpoint_interval_s" "stop_limit_s" "max_jobs" "max_jobs_per_owner" "max_connections_per_uid" "job_idle_s" "job_retention_s" "cpu_threads" "allow_uids" "allow_gids" "peer_listen" "peer_tls_ca" "peer_tls_cert" "peer_tls_key" "peer_tls_name" "listen" "tls_cert" "tls_key" "tls_client_ca" "tls_operators" -}}
{{- if .Values.metrics.listenOnPodIP }}{{ $managed = append $managed "metrics_address" }}{{ end -}}
{{- range .Values.extraArgs -}}
{{- $flag := regexReplaceAll "^--([^=]*).*$" . "${1}" -}}
{{- if has $flag $managed -}}
{{- fail (printf "extraArgs may not set --%s: the chart sets it from its values (see values.yaml)" $flag) -}}
{{- end -}}
{{- end -}}
{{- $managedEnv := list "NODE_NAME" "NODE_IP" "POD_IP" "NVIDIA_VISIBLE_DEVICES" "NVIDIA_DRIVER_CAPABILITIES" "CUDA_CACHE_PATH" -}}
{{- range .Values.extraEnv -}}
{{- if has .name $managedEnv -}}
{{- fail (printf "extraEnv may not set %s: the chart sets it (see values.yaml)" .name) -}}
{{- end -}}
{{- end -}}
{{- $socketDir := clean .Values.socket.hostPath -}}
{{- $stateDir := clean .Values.state.hostPath -}}
{{- if or (eq $socketDir $stateDir) (hasPrefix (printf "%s/" (trimSuffix "/" $stateDir)) $socketDir) (hasPrefix (printf "%s/" (trimSuffix "/" $socketDir)) $stateDir) -}}
{{- fail (printf "socket.hostPath (%s) and state.hostPath (%s) must be apart, neither in the other: gstabd makes a state folder that holds only its own files mode 0700, which would shut the workers out of the socket, and the workers' pods would see the checkpoints' folder" .Values.socket.hostPath .Values.state.hostPath) -}}
{{- end -}}
{{- if ne (int64 (.Values.securityContext.runAsUser | default 0)) 0 -}}
{{- fail (printf "securityContext.runAsUser must be 0 (it is %v): a container of another uid has none of the capabilities it adds (Kubernetes grants no ambient ones), so gstabd could open neither workers' shared memory (0600, theirs) nor the root-owned TLS Secret files and host folders; it keeps only DAC_OVERRIDE and FOWNER as root" .Values.securityContext.runAsUser) -}}
{{- end -}}
{{- if .Values.securityContext.runAsNonRoot -}}
{{- fail "securityContext.runAsNonRoot must not be true: gstabd runs as root (runAsUser 0) with only DAC_OVERRIDE and FOWNER, and the kubelet would refuse to start its container on every node (a values file of an organisation's defaults often sets it: override it with false here)" -}}
{{- end -}}
{{- if kindIs "invalid" .Values.affinity -}}
{{- range $key, $want := dict "kubernetes.io/arch" "amd64" "kubernetes.io/os" "linux" -}}
{{- $given := index ($.Values.nodeSelector | default dict) $key -}}
{{- if and $given (ne (toString $given) $want) -}}
{{- fail (printf "nodeSelector %s=%v leaves gstabd no node: its default affinity keeps it to %s nodes, which the images are built for; for an image of your own built for %v, set affinity (your own terms, or {} for none)" $key $given $want $given) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $caps := (.Values.securityContext.capabilities | default dict).add | default list -}}
{{- $names := list -}}
{{- range $caps }}{{ $names = append $names (trimPrefix "CAP_" (upper (toString .))) }}{{ end -}}
{{- if and (not .Values.securityContext.privileged) (not (and (has "DAC_OVERRIDE" $names) (has "FOWNER" $names))) -}}
{{- fail (printf "securityContext.capabilities.add must keep DAC_OVERRIDE and FOWNER (it is %v): without them gstabd can open no worker's shared memory (0600, theirs) and cannot remove a dead worker's from /dev/shm; a list given with --set or -f replaces the chart's whole, so add others beside them: [DAC_OVERRIDE, FOWNER, IPC_LOCK]" $caps) -}}
{{- end -}}
{{- if or .Values.allowUids .Values.allowGids -}}
{{- $uid := int64 (.Values.securityContext.runAsUser | default 0) -}}
{{- $gid := int64 (.Values.securityContext.runAsGroup | default 0) -}}
{{- if not (kindIs "invalid" .Values.socket.gid) }}{{ $gid = int64 .Values.socket.gid }}{{ end -}}
{{- $admitted := false -}}
{{- range .Values.allowUids }}{{ if eq (int64 .) $uid }}{{ $admitted = true }}{{ end }}{{ end -}}
{{- range .Values.allowGids }}{{ if eq (int64 .) $gid }}{{ $admitted = true }}{{ end }}{{ end -}}
{{- if not $admitted -}}
{{- fail (printf "allowUids/allowGids must admit the helm test pod and `kubectl exec gstabctl` into gstabd's pod, which connect as uid %d with gid %d: add %d to allowUids, or %d to allowGids" $uid $gid $uid $gid) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.peer.enabled (eq (int64 .Values.peer.port) (int64 .Values.metrics.port)) -}}
{{- fail "peer.port and metrics.port must differ: with peer.enabled both are ports of the node's network" -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled .Values.peer.enabled -}}
{{- fail "networkPolicy.enabled does not cover peer.enabled: gstabd then runs on the host network, which NetworkPolicies do not reach; keep its ports (metrics.port, peer.port, and those Gloo and NCCL open) to the scrapers and the other nodes with the hosts' firewall, and leave networkPolicy.enabled false" -}}
{{- end -}}
{{- if and .Values.networkPolicy.apiFrom (not .Values.api.enabled) -}}
{{- fail "networkPolicy.apiFrom admits clients to gstabd's TCP API: set api.enabled=true (and api.tlsSecret) too, or leave networkPolicy.apiFrom empty" -}}
{{- end -}}
{{- if and .Values.api.operators (not .Values.api.enabled) -}}
{{- fail "api.operators names certificates of gstabd's TCP port: set api.enabled=true (and api.tlsSecret) too, or leave api.operators empty" -}}
{{- end -}}
{{- if .Values.api.enabled -}}
{{- if eq (int64 .Values.api.port) (int64 .Values.metrics.port) -}}
{{- fail "api.port and metrics.port must differ: both are ports of gstabd's pod" -}}
{{- end -}}
{{- if and .Values.peer.enabled (eq (int64 .Values.api.port) (int64 .Values.peer.port)) -}}
{{- fail "api.port and peer.port must differ: both are ports of the node's network" -}}
{{- end -}}
{{- end -}}
{{- end -}}
