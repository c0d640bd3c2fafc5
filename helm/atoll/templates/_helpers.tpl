{{/*
Helpers shared by the RayJob, RayService and ConfigMap templates.
Most take a dict: root (the top context), role (island|router|serve), island (name or ""),
name (the object's name).
*/}}

{{/* The run name: .Values.run, else the release name. */}}
{{- define "atoll.run" -}}
{{- .Values.run | default .Release.Name -}}
{{- end -}}

{{/* "<run>-<suffix>", checked against KubeRay's limits (DNS-1035 label, at most 47 characters). */}}
{{- define "atoll.objectName" -}}
{{- $n := printf "%s-%s" (include "atoll.run" .root) .suffix -}}
{{- if gt (len $n) 47 -}}
{{- fail (printf "object name %q has %d characters; KubeRay allows at most 47 for a RayJob or RayService name: shorten the run name (%q) or %q" $n (len $n) (include "atoll.run" .root) .suffix) -}}
{{- end -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $n) -}}
{{- fail (printf "object name %q is not a DNS-1035 label: the run name must start with a lowercase letter" $n) -}}
{{- end -}}
{{- $n -}}
{{- end -}}

{{- define "atoll.namespace" -}}
{{- .ns | default .root.Release.Namespace -}}
{{- end -}}

{{- define "atoll.labels" -}}
app.kubernetes.io/name: atoll
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .role }}
app.kubernetes.io/managed-by: {{ .root.Values.managedBy | default .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
atoll.dev/run: {{ include "atoll.run" .root }}
atoll.dev/role: {{ .role }}
{{- if .island }}
atoll.dev/island: {{ .island }}
{{- end }}
{{- end -}}

{{- define "atoll.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The store URI; required as soon as a pod is rendered. */}}
{{- define "atoll.storeUri" -}}
{{- required "store.uri is required: the pods read and write the run there (e.g. --set store.uri=s3://bucket/runs)" .Values.store.uri -}}
{{- end -}}

{{/* Environment of every Ray container: the store, S3 settings, credentials from a Secret. */}}
{{- define "atoll.env" -}}
{{- $v := .Values -}}
- name: ATOLL_STORE
  value: {{ include "atoll.storeUri" . | quote }}
- name: ATOLL_SPEC
  value: /etc/atoll/job.yaml
{{- with $v.store.s3.endpointUrl }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with $v.store.s3.region }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- with $v.store.credentials.secretName }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $v.store.credentials.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $v.store.credentials.secretAccessKeyKey }}
{{- end }}
{{- with $v.env }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Container resources with .gpus added as an nvidia.com/gpu limit. */}}
{{- define "atoll.resources" -}}
{{- $res := deepCopy (.resources | default dict) -}}
{{- if gt (int .gpus) 0 -}}
{{- $limits := deepCopy (get $res "limits" | default dict) -}}
{{- $_ := set $limits "nvidia.com/gpu" (int .gpus) -}}
{{- $_ := set $res "limits" $limits -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/*
A Ray pod template. Takes the dict of "atoll.labels" plus: container (ray-head|ray-worker),
configMap, resources, gpus, nodeSelector, tolerations, and optionally extraEnv (a list of EnvVar).
*/}}
{{- define "atoll.podTemplate" -}}
{{- $v := .root.Values -}}
metadata:
  labels:
    {{- include "atoll.labels" . | nindent 4 }}
spec:
  {{- with $v.pod.serviceAccountName }}
  serviceAccountName: {{ . }}
  {{- end }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  containers:
    - name: {{ .container }}
      image: {{ include "atoll.image" .root }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      env:
        {{- include "atoll.env" .root | nindent 8 }}
        {{- with .extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $v.envFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      resources:
        {{- include "atoll.resources" . | nindent 8 }}
      volumeMounts:
        - name: atoll-spec
          mountPath: /etc/atoll
          readOnly: true
        {{- with $v.volumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: atoll-spec
      configMap:
        name: {{ .configMap }}
    {{- with $v.volumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with (.nodeSelector | default $v.pod.nodeSelector) }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with (.tolerations | default $v.pod.tolerations) }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* The ConfigMap holding the job spec; takes the "atoll.labels" dict plus name and ns. */}}
{{- define "atoll.specConfigMap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .name }}-spec
  namespace: {{ include "atoll.namespace" . }}
  labels:
    {{- include "atoll.labels" . | nindent 4 }}
data:
  job.yaml: |
    {{- toYaml (required "jobSpec is required: the atoll job spec (apiVersion atoll/v1) the pods run" .root.Values.jobSpec) | nindent 4 }}
{{- end -}}

{{/*
A RayJob: takes the "atoll.labels" dict plus name, ns, entrypoint, experts (string or ""),
workers, gpus, resources, nodeSelector, tolerations.
*/}}
{{- define "atoll.rayJob" -}}
{{- $t := .root.Values.training -}}
{{- $head := dict -}}
{{- $worker := dict -}}
{{- range $k, $v := . }}{{ $_ := set $head $k $v }}{{ $_ := set $worker $k $v }}{{ end -}}
{{- $_ := set $head "container" "ray-head" -}}
{{- $_ := set $head "resources" .root.Values.headResources -}}
{{- $_ := set $head "gpus" 0 -}}
{{- $_ := set $worker "container" "ray-worker" -}}
{{- $_ := set $head "configMap" (printf "%s-spec" .name) -}}
{{- $_ := set $worker "configMap" (printf "%s-spec" .name) -}}
apiVersion: ray.io/v1
kind: RayJob
metadata:
  name: {{ .name }}
  namespace: {{ include "atoll.namespace" . }}
  labels:
    {{- include "atoll.labels" . | nindent 4 }}
    atoll.dev/attempt: "1"
  {{- if .experts }}
  annotations:
    atoll.dev/experts: {{ .experts | quote }}
  {{- end }}
spec:
  entrypoint: {{ .entrypoint | quote }}
  submissionMode: K8sJobMode
  shutdownAfterJobFinishes: {{ $t.shutdownAfterJobFinishes }}
  ttlSecondsAfterFinished: {{ $t.ttlSecondsAfterFinished }}
  backoffLimit: {{ $t.backoffLimit }}
  {{- if gt (int $t.activeDeadlineSeconds) 0 }}
  activeDeadlineSeconds: {{ $t.activeDeadlineSeconds }}
  {{- end }}
  rayClusterSpec:
    rayVersion: {{ .root.Values.rayVersion | quote }}
    headGroupSpec:
      rayStartParams: {}
      template:
        {{- include "atoll.podTemplate" $head | nindent 8 }}
    workerGroupSpecs:
      - groupName: workers
        replicas: {{ .workers }}
        minReplicas: {{ .workers }}
        maxReplicas: {{ .workers }}
        rayStartParams: {}
        template:
          {{- include "atoll.podTemplate" $worker | nindent 10 }}
{{- end -}}
