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

{{/* The probe: gstabctl asks gstabd's health service over the socket. */}}
{{- define "gstab.healthCommand" -}}
exec:
  command: [gstabctl, --socket={{ include "gstab.socketPath" . }}, health]
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
