-- Argo CD health of a glmops.io ModelDeployment, from the status the operator writes.
-- Install: argocd-cm key resource.customizations.health.glmops.io_ModelDeployment (docs/gitops.md).
--   a spec the operator has not seen yet    -> Progressing
--   Ready (every replica serves)            -> Healthy
--   Degraded, Failed (refused spec, a new
--   version that never became ready, ...)   -> Degraded (the condition's message)
--   Pending (waiting for its FineTuneJob,
--   a PVC, a download), Progressing         -> Progressing
local hs = {}

local function condition(status, kind)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function said(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the glmops operator"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "The operator has not yet acted on generation " .. tostring(generation)
  return hs
end

local phase = status.phase
local degraded = condition(status, "Degraded")
if phase == "Failed" or phase == "Degraded" or (degraded ~= nil and degraded.status == "True") then
  hs.status = "Degraded"
  hs.message = said(degraded, said(condition(status, "Resolved"), said(condition(status, "Ready"), phase)))
  return hs
end
if phase == "Ready" then
  hs.status = "Healthy"
  hs.message = tostring(status.readyReplicas or 0) .. " replica(s) ready at " .. tostring(status.endpoint or "")
  return hs
end

hs.status = "Progressing"
local resolved = condition(status, "Resolved")
if resolved ~= nil and resolved.status ~= "True" then
  hs.message = phase .. ": " .. said(resolved, "waiting")
else
  hs.message = phase .. ": " .. said(condition(status, "Ready"), "rolling out")
end
return hs
